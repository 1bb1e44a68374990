-- Examples of a dataset with no score yet for (method, concept), in insertion order. Params: dataset, method, concept.
SELECT e.example_id, e.prompt, e.response, e.text
FROM examples e
ANTI JOIN (SELECT example_id FROM scores WHERE dataset = $dataset AND method = $method AND concept = $concept) s
    ON s.example_id = e.example_id
WHERE e.dataset = $dataset
ORDER BY e.position;
