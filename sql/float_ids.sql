-- `float_written_id(id)`: an id, as a CSV or JSON file writes it, that is a whole number written as a float
-- (1.0, -3.00: pandas writes an integer column with a missing value so). Ids are compared as text, so it
-- would not match the 1 of another file. One rule for the ids of logs (ingest_checks.sql) and of policies
-- (`mval policy add`); ids such as 1.5 or v1.0 are text and pass.
CREATE OR REPLACE TEMP MACRO float_written_id(id) AS regexp_full_match(id, '-?[0-9]+\.0+');
