-- wrk script for the load benchmark through Traefik: every request is a page request to one of
-- Traefik's routers (the Host header picks the path under test), from a client address drawn at
-- random from a pool (PREFIX.a.b.c for 0 <= i < POOL) in X-Forwarded-For, which Traefik's
-- entrypoint trusts from 127.0.0.1 as it would from a load balancer in front of it; with the
-- headers a browser sends, and optionally a session cookie. Prints one JSON line (prefixed "JSON ") for the runner.

local pool = tonumber(os.getenv("POOL") or "100000")
local prefix = os.getenv("PREFIX") or "2"
local host = os.getenv("HOST") or "alone.bench"
local cookie = os.getenv("COOKIE")

math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))

request = function()
  local i = math.random(0, pool - 1)
  local ip = string.format("%s.%d.%d.%d", prefix, math.floor(i / 65536) % 256, math.floor(i / 256) % 256, i % 256)
  -- What a current Chromium sends for a page: the proxy reads, copies and forwards all of it.
  local headers = {
    ["Host"] = host,
    ["X-Forwarded-For"] = ip,
    ["Accept"] = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8",
    ["Accept-Encoding"] = "gzip, deflate, br, zstd",
    ["Accept-Language"] = "en-US,en;q=0.9",
    ["Cache-Control"] = "max-age=0",
    ["Sec-Ch-Ua"] = '"Chromium";v="131", "Not_A Brand";v="24"',
    ["Sec-Ch-Ua-Mobile"] = "?0",
    ["Sec-Ch-Ua-Platform"] = '"Linux"',
    ["Sec-Fetch-Dest"] = "document",
    ["Sec-Fetch-Mode"] = "navigate",
    ["Sec-Fetch-Site"] = "same-origin",
    ["Sec-Fetch-User"] = "?1",
    ["Upgrade-Insecure-Requests"] = "1",
    ["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
  }
  if cookie and cookie ~= "" then
    headers["Cookie"] = "_jacker_gate=" .. cookie
  end
  return wrk.format("GET", "/static/app.js", headers)
end

-- `done`: the JSON summary line, shared with the other script.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "summary.lua")
