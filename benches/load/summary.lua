-- The summary both wrk scripts of the load benchmark print: one JSON line (prefixed "JSON ")
-- that run.py and traefik.py read. Loaded with dofile from the script's own directory.

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"socket_errors":%d,"non_2xx":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
