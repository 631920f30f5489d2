-- A trip's region is an H3 cell written as its 15 hexadecimal digits (cells' top digit is 8),
-- as the service has always written it: now the schema says so, as it does of states, so a
-- trip read back always has a region the code can use. NOT VALID: rows already written are not
-- scanned (they were written by the same code), so adding it takes no long lock, and a
-- replica of the previous version, which writes the same text, runs against it unchanged.
ALTER TABLE trips ADD CONSTRAINT trips_region_is_a_cell
    CHECK (region ~ '^8[0-9a-f]{14}$') NOT VALID;
