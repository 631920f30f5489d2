// The map every page draws on: its base style from the gateway's settings (a MapLibre style
// URL, whose sources may be PMTiles archives, `pmtiles://...`, such as one the gateway serves
// under /tiles/), or the bundled offline outline of the world's countries when none is set;
// and the page's own sources and layers on top.

import maplibregl from "maplibre-gl";
import "maplibre-gl/dist/maplibre-gl.css";
import { Protocol } from "pmtiles";
import { feature } from "topojson-client";
import countries from "world-atlas/countries-110m.json";

let pmtiles = false;

/** The offline outline: sea, land and borders, no network needed. */
function outline() {
  return {
    version: 8,
    name: "Offline outline",
    sources: { countries: { type: "geojson", data: feature(countries, countries.objects.countries) } },
    layers: [
      { id: "sea", type: "background", paint: { "background-color": "#dbe7f0" } },
      { id: "land", type: "fill", source: "countries", paint: { "fill-color": "#f4f1ea" } },
      {
        id: "borders",
        type: "line",
        source: "countries",
        paint: { "line-color": "#b9b3a6", "line-width": 0.8 },
      },
    ],
  };
}

/** The configured style, with its relative URLs made absolute against where it came from. */
async function configured(url) {
  if (!pmtiles) {
    maplibregl.addProtocol("pmtiles", new Protocol().tile);
    pmtiles = true;
  }
  const base = new URL(url, location.href);
  const response = await fetch(base);
  if (!response.ok) throw new Error(`the map style ${base} answered ${response.status}`);
  const style = await response.json();
  const absolute = (value) => {
    if (typeof value !== "string") return value;
    if (value.startsWith("pmtiles://")) {
      return `pmtiles://${new URL(value.slice("pmtiles://".length), base)}`;
    }
    // Templates ({z}, {fontstack}) survive: only the part before them is resolved.
    return value.includes("://") ? value : new URL(value, base).href.replace(/%7B/g, "{").replace(/%7D/g, "}");
  };
  for (const source of Object.values(style.sources ?? {})) {
    if (source.url) source.url = absolute(source.url);
    if (Array.isArray(source.tiles)) source.tiles = source.tiles.map(absolute);
  }
  if (style.glyphs) style.glyphs = absolute(style.glyphs);
  if (typeof style.sprite === "string") style.sprite = absolute(style.sprite);
  return style;
}

/**
 * Makes the map in `container`: the base style from `config.map_style` (or the outline when
 * it is unset or cannot be loaded, said in `onProblem`), then `sources` and `layers` on top.
 */
export async function makeMap(container, config, sources, layers, onProblem = () => {}) {
  let style = outline();
  if (config.map_style) {
    try {
      style = await configured(config.map_style);
    } catch (error) {
      onProblem(`map style unavailable, showing the outline: ${error.message}`);
    }
  }
  style.sources = { ...style.sources, ...sources };
  style.layers = [...style.layers, ...layers];
  const map = new maplibregl.Map({
    container,
    center: [config.center[1], config.center[0]],
    zoom: config.zoom,
    attributionControl: false,
    style,
  });
  // A tile or source that fails (a tile server down, an archive missing) is said, not hidden.
  map.on("error", (event) => onProblem(`map: ${event.error?.message ?? "error"}`));
  return map;
}

export function emptyCollection() {
  return { type: "FeatureCollection", features: [] };
}

export { maplibregl };
