-- bench: wrk -s report.lua -- prints wrk's summary and latency
-- percentiles in a form bench/run.pl parses (and merges across the two
-- wrk processes of a 10,000-connection run). Latencies in microseconds,
-- the same figures `wrk --latency` prints (after its own correction).
local grid = {}
for p = 1, 99 do grid[#grid + 1] = p end
for _, p in ipairs({ 99.1, 99.2, 99.3, 99.4, 99.5, 99.6, 99.7, 99.8, 99.9,
                     99.95, 99.99 }) do
    grid[#grid + 1] = p
end

done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "APXBENCH requests=%d duration_us=%d bytes=%d connect=%d read=%d " ..
        "write=%d status=%d timeout=%d lat_max=%d\n",
        summary.requests, summary.duration, summary.bytes, e.connect, e.read,
        e.write, e.status, e.timeout, latency.max))
    if summary.requests > 0 and latency.max > 0 then
        for _, p in ipairs(grid) do
            io.write(string.format("APXPCT %s %d\n", p, latency:percentile(p)))
        end
    end
end
