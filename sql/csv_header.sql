-- The header line of a CSV file as written, to find a repeated column name (DuckDB's
-- reader renames the second `action` to `action_1`). $skip and the dialect ($delim, $quote, $escape,
-- $comment, $new_line) are those that DuckDB's sniffer detected (sniff_csv reads a sample, not the file);
-- $columns: one VARCHAR column per column of the file. Nothing is detected again; only one line is read.
SELECT *
FROM read_csv($path, auto_detect = false, header = false, columns = $columns, skip = $skip, delim = $delim,
              quote = $quote, escape = $escape, comment = $comment, new_line = $new_line)
LIMIT 1;
