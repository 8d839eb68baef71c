-- wrk script for the load benchmark: every request is a ForwardAuth call as Traefik makes it,
-- with a client address drawn at random from a pool (PREFIX.a.b.c for 0 <= i < POOL) in
-- X-Forwarded-For, and optionally a session cookie. The baseline servers get the same requests.
-- Prints one JSON line (prefixed "JSON ") for the runner.

local pool = tonumber(os.getenv("POOL") or "100000")
local prefix = os.getenv("PREFIX") or "2"
local cookie = os.getenv("COOKIE")
local fwd_host = os.getenv("FWD_HOST") or "app.example.com"
local fwd_uri = os.getenv("FWD_URI") or "/static/app.js"

math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))

request = function()
  local i = math.random(0, pool - 1)
  local ip = string.format("%s.%d.%d.%d", prefix, math.floor(i / 65536) % 256, math.floor(i / 256) % 256, i % 256)
  local headers = {
    ["X-Forwarded-For"] = ip,
    ["X-Forwarded-Method"] = "GET",
    ["X-Forwarded-Proto"] = "https",
    ["X-Forwarded-Host"] = fwd_host,
    ["X-Forwarded-Uri"] = fwd_uri,
    ["Accept"] = "text/html",
  }
  if cookie and cookie ~= "" then
    headers["Cookie"] = "_jacker_gate=" .. cookie
  end
  return wrk.format("GET", "/auth", headers)
end

-- `done`: the JSON summary line, shared with the other script.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "summary.lua")
