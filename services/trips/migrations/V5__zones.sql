-- Zones drawn by dispatchers: named GeoJSON polygons with a kind and metadata. Every change
-- bumps `zone_generation` in the same transaction, so each trips process notices a change by
-- reading one row.
CREATE TABLE zones (
    zone_id    uuid PRIMARY KEY,
    name       text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('service_area', 'no_pickup', 'queue', 'watch')),
    geometry   jsonb NOT NULL,
    metadata   jsonb NOT NULL DEFAULT '{}',
    version    bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE zone_generation (
    id         integer PRIMARY KEY CHECK (id = 1),
    generation bigint NOT NULL
);
INSERT INTO zone_generation VALUES (1, 0);
