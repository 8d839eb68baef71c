#!/usr/bin/env python3
"""The load benchmark: jacker-gate against the physical limit of this machine, in one run.

Targets, each hit by `wrk -t1 -c64` on loopback with the same Lua script (load.lua):
  baseline      a bare hyper 200 server built from this repository (examples/bare.rs)
  nginx         nginx `return 200` (a C reference point)
  public        /auth on a public route, N decisions synced from a real CrowdSec LAPI,
                the rate limiter on (limit set high), clients drawn from a 100k pool, none banned
  public-shared the same with the shared rate limit (`rate_limit.store = "redis"`, the Redis
                of the session targets): its Redis calls per request are reported too
  banned        the same gate, every client banned (403 path)
  limited       a gate whose limit every client is over (429 path)
  session       /auth on a login route with a valid session cookie, Redis store, cache warm
  session-cold  the same with the local cache off: every request reads Redis

The targets are interleaved (A B C ... A B C ...) and the median of the repetitions is reported,
with each target's ratio to the baseline, p50/p99 latency, the server's CPU per request, and how
much CPU everything else on the machine used during the run (a noisy run is flagged).
--targets picks some of them (the baseline is always measured: the ratios need it).

After the targets, the shared limit's accuracy: 3 gates with `store = "redis"`, per_second 50,
burst 100, each hammered by its own wrk (-c8) with one client address (X-Forwarded-For from
loopback, a trusted peer) for --accuracy-seconds; the 2xx answers of all three against the
budget of one replica, burst + per_second x t (t: from the first wrk's start to the last one's
end), and Redis's EVALSHA/EVAL calls per request. Within 10% is the target (smoke: 50%).
--accuracy-seconds 0 skips it.

  python3 benches/load/run.py                 # full run: 100k decisions, 3 x 10 s per target
  python3 benches/load/run.py --smoke         # CI smoke: 1k decisions, 1 x 1 s per target,
                                              # accuracy over 2 s
  python3 benches/load/run.py --targets public,public-shared
                                              # the shared limit against the local one
  python3 benches/load/run.py --memory        # RSS: idle, 100k and 1M decisions, 10-minute churn
  python3 benches/load/run.py --traefik --plugin-src DIR
                                              # through the real Traefik (about 10 minutes)

With --traefik, one Traefik routes to one upstream through each path under test (--paths):
  alone, plugin (the CrowdSec bouncer plugin from DIR, a checkout of
  maxlerebourg/crowdsec-bouncer-traefik-plugin with vendor/, plus Traefik's rateLimit), fa-h1
  (forwardAuth to the gate over HTTP/1.1), fa-h2 (over TLS: HTTP/2), fa-mtls (with a client
  certificate, as deployed), login (fa-mtls on a login route with a session), fa-mtls-2t (a
  gate with two worker threads; only when listed). Columns: req/s and its ratio to plugin,
  wrk's p50/p99, Traefik's and the gate's CPU per request, new TCP connections per request
  (the machine's ActiveOpens less wrk's own), and the most CPU anything else used during that
  path's runs ("other cores"; above 0.15 in any run the whole report says NOISY). Add
  --profile OUT for Traefik's pprof and the gate's perf profile (benches/load/traefik.py).
  Every run, --smoke included, first builds the release binaries.

Everything runs on 127.0.0.1 on free ports; every process started is stopped by its PID.
"""

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LUA = os.path.join(ROOT, "benches", "load", "load.lua")
CLK_TCK = os.sysconf("SC_CLK_TCK")
INSTALL_HINT = "run `bash scripts/install-test-deps.sh`"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(binary):
    path = shutil.which(binary)
    if not path:
        sys.exit(f"{binary} is not installed: {INSTALL_HINT}")
    return path


def http_status(url, timeout=1.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def wait_until(what, check, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}")


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds():
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts[:8]) - idle) / CLK_TCK


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Proc:
    """A child process we started; stopped by its PID, never by name."""

    def __init__(self, name, cmd, workdir, env=None, cwd=None):
        self.name = name
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.log = open(self.log_path, "wb")
        self.p = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                  stdin=subprocess.DEVNULL, cwd=cwd)

    @property
    def pid(self):
        return self.p.pid

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


class Lapi:
    def __init__(self, workdir, procs):
        self.dir = os.path.join(workdir, "lapi")
        os.makedirs(self.dir)
        for sub in ("data", "hub", "notifications"):
            os.makedirs(os.path.join(self.dir, sub))
        self.port = free_port()
        d = self.dir
        with open(os.path.join(d, "config.yaml"), "w") as f:
            f.write(f"""common:
  daemonize: false
  log_media: stdout
  log_level: warning
  working_dir: {d}
config_paths:
  config_dir: {d}/
  data_dir: {d}/data/
  simulation_path: {d}/simulation.yaml
  hub_dir: {d}/hub/
  index_path: {d}/hub/.index.json
  notification_dir: {d}/notifications/
  plugin_dir: /usr/lib/crowdsec/plugins/
cscli:
  output: human
db_config:
  log_level: warning
  type: sqlite
  db_path: {d}/data/crowdsec.db
  use_wal: true
api:
  client:
    credentials_path: {d}/local_api_credentials.yaml
  server:
    log_level: warning
    listen_uri: 127.0.0.1:{self.port}
    profiles_path: {d}/profiles.yaml
    console_path: {d}/console.yaml
    trusted_ips:
      - 127.0.0.1
prometheus:
  enabled: false
""")
        with open(os.path.join(d, "simulation.yaml"), "w") as f:
            f.write("simulation: off\n")
        with open(os.path.join(d, "profiles.yaml"), "w") as f:
            f.write("name: default\nfilters:\n - Alert.Remediation == true\ndecisions:\n - type: ban\n   duration: 4h\non_success: break\n")
        self.proc = Proc("crowdsec", [need("crowdsec"), "-c", f"{d}/config.yaml", "-no-cs", "-no-capi"],
                         workdir)
        procs.append(self.proc)
        wait_until("the CrowdSec LAPI", lambda: http_status(f"{self.url}/health") == 200, 30)
        self.cscli("machines", "add", "--auto", "-f", f"{d}/local_api_credentials.yaml",
                   "--url", self.url)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def cscli(self, *args):
        out = subprocess.run([need("cscli"), "-c", f"{self.dir}/config.yaml", *args],
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            sys.exit(f"cscli {' '.join(args)} failed: {out.stderr}")
        return out.stdout

    def bouncer_key(self, name):
        return self.cscli("bouncers", "add", name, "-o", "raw").strip()

    def import_bans(self, count, prefix=1, start=0):
        # In batches: one sqlite transaction of 900k decisions ends in "database is locked".
        for lo in range(start, start + count, 100_000):
            hi = min(lo + 100_000, start + count)
            path = os.path.join(self.dir, f"bans-{lo}.csv")
            with open(path, "w") as f:
                f.write("duration,scope,value\n")
                for i in range(lo, hi):
                    f.write(f"4h,ip,{pool_ip(prefix, i)}\n")
            for attempt in range(3):
                out = subprocess.run([need("cscli"), "-c", f"{self.dir}/config.yaml", "decisions",
                                      "import", "-i", path], capture_output=True, text=True, timeout=600)
                if out.returncode == 0:
                    break
                time.sleep(2)
            else:
                sys.exit(f"cscli decisions import failed: {out.stderr}")


def pool_ip(prefix, i):
    return f"{prefix}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def gate_config(port, key_file, lapi_url, per_second, burst, login=None, shared_limit=None):
    cfg = f"""[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
[crowdsec]
lapi_url = "{lapi_url}"
api_key_file = "{key_file}"
update_interval = "10s"
[rate_limit]
per_second = {per_second}
burst = {burst}
{f'store = "redis"{chr(10)}redis_url = "{shared_limit}"' if shared_limit else ""}
[log]
level = "warn"
"""
    if login:
        cfg += f"""[auth]
provider = "oidc"
issuer_url = "http://127.0.0.1:9"
client_id = "jacker-gate"
client_secret_file = "{login['client_secret']}"
allowed_domains = ["example.com"]
[session]
store = "redis"
redis_url = "{login['redis_url']}"
cookie_secret_file = "{login['cookie_secret']}"
cookie_secure = false
cache_ttl = "{login['cache_ttl']}"
"""
    else:
        cfg += "[[rules]]\npolicy = \"public\"\n"
    return cfg


def start_gate(name, workdir, procs, binary, **kw):
    port = free_port()
    path = os.path.join(workdir, f"{name}.toml")
    with open(path, "w") as f:
        f.write(gate_config(port, **kw))
    proc = Proc(name, [binary, "run", "--config", path], workdir)
    procs.append(proc)
    wait_until(f"gate {name} ready", lambda: http_status(f"http://127.0.0.1:{port}/readyz") == 200, 60)
    return proc, port


def wrk_cmd(port, seconds, connections=64):
    return [need("wrk"), "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", LUA,
            f"http://127.0.0.1:{port}/auth"]


def wrk_summary(out):
    line = next((l for l in out.stdout.splitlines() if l.startswith("JSON ")), None)
    if line is None:
        sys.exit(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")
    return json.loads(line[5:])


def run_wrk(port, seconds, env_extra):
    env = dict(os.environ)
    env.update(env_extra)
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(wrk_cmd(port, seconds), capture_output=True, text=True, env=env,
                         timeout=seconds + 60)
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after_children.ru_utime - before_children.ru_utime) + (
        after_children.ru_stime - before_children.ru_stime)
    return wrk_summary(out), wrk_cpu


def redis_script_calls(port):
    """EVALSHA + EVAL calls Redis has served (INFO commandstats), over a plain socket."""
    with socket.create_connection(("127.0.0.1", port), 2) as s:
        s.sendall(b"INFO commandstats\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            header, _, rest = data.partition(b"\r\n")
            if header.startswith(b"$") and len(rest) >= int(header[1:]):
                break
    calls = 0
    for line in data.decode().splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
            calls += int(line.split("calls=", 1)[1].split(",", 1)[0])
    return calls


def measure(target, pids, seconds, helpers=()):
    """One wrk run of `target`: the CPU of the server's processes `pids`, and of everything on
    the machine but them, wrk and the `helpers` the scenario needs (Redis, the LAPI)."""
    cpu = lambda ps: sum(proc_cpu_seconds(p) for p in ps)
    redis_port = target.get("redis_port")
    calls0 = redis_script_calls(redis_port) if redis_port else 0
    cpu0, h0, busy0, t0 = cpu(pids), cpu(helpers), machine_busy_seconds(), time.time()
    summary, wrk_cpu = run_wrk(target["port"], seconds, target["env"])
    cpu1, h1, busy1, t1 = cpu(pids), cpu(helpers), machine_busy_seconds(), time.time()
    calls1 = redis_script_calls(redis_port) if redis_port else 0
    server_cpu = cpu1 - cpu0
    requests = max(summary["requests"], 1)
    other = max(0.0, (busy1 - busy0) - server_cpu - (h1 - h0) - wrk_cpu) / (t1 - t0)
    return {
        "rps": requests / (summary["duration_us"] / 1e6),
        "p50_us": summary["p50_us"],
        "p99_us": summary["p99_us"],
        "cpu_us_per_req": server_cpu / requests * 1e6,
        "helpers_cpu_us_per_req": (h1 - h0) / requests * 1e6,
        "redis_calls_per_req": (calls1 - calls0) / requests,
        "other_cores": other,
        "non_2xx_share": summary["non_2xx"] / requests,
        "socket_errors": summary["socket_errors"],
    }


def nginx_conf(workdir, port):
    d = os.path.join(workdir, "nginx")
    os.makedirs(os.path.join(d, "logs"))
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(f"""worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200; }}
    }}
}}
""")
    return d, path


def build():
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "jacker-gate",
                    "--example", "bare", "--example", "mint_session"], cwd=ROOT, check=True)
    rel = os.path.join(ROOT, "target", "release")
    return (os.path.join(rel, "jacker-gate"), os.path.join(rel, "examples", "bare"),
            os.path.join(rel, "examples", "mint_session"))


def login_store(workdir, procs, gate_bin, mint_bin):
    """A Redis on a free port with one session in it: (its Proc, the gate's login settings
    without cache_ttl, the session's cookie value)."""
    redis_port = free_port()
    redis = Proc("redis", [need("redis-server"), "--port", str(redis_port), "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "no"], workdir)
    procs.append(redis)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    wait_until("redis", lambda: _can_connect(redis_port), 10)
    cookie_secret = os.path.join(workdir, "cookie_secret")
    with open(cookie_secret, "w") as f:
        f.write(subprocess.run([gate_bin, "gen-secret"], capture_output=True, text=True,
                               check=True).stdout)
    client_secret = os.path.join(workdir, "client_secret")
    with open(client_secret, "w") as f:
        f.write("unused-by-the-load-run")
    cookie = subprocess.run([mint_bin, redis_url, cookie_secret], capture_output=True, text=True,
                            check=True).stdout.strip()
    login = dict(client_secret=client_secret, redis_url=redis_url, cookie_secret=cookie_secret)
    return redis, redis_port, login, cookie


def throughput(args):
    gate_bin, bare_bin, mint_bin = build()
    procs = []
    workdir = tempfile.mkdtemp(prefix="jacker-gate-load-")
    try:
        lapi = Lapi(workdir, procs)
        key_file = os.path.join(workdir, "bouncer_key")
        with open(key_file, "w") as f:
            f.write(lapi.bouncer_key("load"))
        t = time.time()
        lapi.import_bans(args.decisions, prefix=1)
        print(f"imported {args.decisions} decisions in {time.time() - t:.1f} s", flush=True)

        redis, redis_port, login, cookie = login_store(workdir, procs, gate_bin, mint_bin)
        base = dict(binary=gate_bin, key_file=key_file, lapi_url=lapi.url)
        g_public, p_public = start_gate("gate-public", workdir, procs, per_second=10_000_000,
                                        burst=10_000_000, **base)
        g_shared, p_shared = start_gate("gate-public-shared", workdir, procs, per_second=10_000_000,
                                        burst=10_000_000, shared_limit=login["redis_url"], **base)
        g_limited, p_limited = start_gate("gate-limited", workdir, procs, per_second=1, burst=1, **base)
        g_session, p_session = start_gate("gate-session", workdir, procs, per_second=10_000_000,
                                          burst=10_000_000, login=dict(login, cache_ttl="1h"), **base)
        g_cold, p_cold = start_gate("gate-session-cold", workdir, procs, per_second=10_000_000,
                                    burst=10_000_000, login=dict(login, cache_ttl="0s"), **base)

        bare_port = free_port()
        bare = Proc("bare", [bare_bin, f"127.0.0.1:{bare_port}"], workdir)
        procs.append(bare)
        wait_until("the bare server", lambda: http_status(f"http://127.0.0.1:{bare_port}/") == 200, 10)

        nginx_port = free_port()
        ndir, nconf = nginx_conf(workdir, nginx_port)
        nginx = Proc("nginx", [need("nginx"), "-p", ndir, "-c", nconf, "-g", "daemon off;", "-e", "stderr"],
                     workdir)
        procs.append(nginx)
        wait_until("nginx", lambda: http_status(f"http://127.0.0.1:{nginx_port}/") == 200, 10)

        pool = str(args.pool)
        public_env = {"POOL": pool, "PREFIX": "2"}
        targets = [
            dict(name="baseline", pid=bare.pid, port=bare_port, env=public_env, expect=0.0),
            dict(name="public", pid=g_public.pid, port=p_public, env=public_env, expect=0.0),
            dict(name="public-shared", pid=g_shared.pid, port=p_shared, env=public_env, expect=0.0,
                 redis_port=redis_port),
            dict(name="banned", pid=g_public.pid, port=p_public,
                 env={"POOL": str(min(args.pool, args.decisions)), "PREFIX": "1"}, expect=1.0),
            dict(name="limited", pid=g_limited.pid, port=p_limited, env={"POOL": "4", "PREFIX": "3"},
                 expect=1.0),
            dict(name="session", pid=g_session.pid, port=p_session, env=dict(public_env, COOKIE=cookie),
                 expect=0.0),
            dict(name="session-cold", pid=g_cold.pid, port=p_cold, env=dict(public_env, COOKIE=cookie),
                 expect=0.0),
            dict(name="nginx", pid=None, port=nginx_port, env=public_env, expect=0.0),
        ]
        if args.targets:
            unknown = set(args.targets) - {t["name"] for t in targets}
            if unknown:
                sys.exit(f"unknown targets: {', '.join(sorted(unknown))}")
            targets = [t for t in targets if t["name"] == "baseline" or t["name"] in args.targets]
        # nginx runs a master and workers: account the workers' CPU through the master's
        # children is not possible from /proc/stat alone, so sum every nginx process we started.
        nginx_pids = lambda: [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent_chain(int(p), nginx.pid)]

        results = {t["name"]: [] for t in targets}
        for rep in range(args.reps):
            for t in targets:
                if t["name"] == "nginx":
                    r = measure(t, nginx_pids(), args.seconds)
                else:
                    r = measure(t, [t["pid"]], args.seconds, helpers=[redis.pid, lapi.proc.pid])
                if abs(r["non_2xx_share"] - t["expect"]) > 0.05 or r["socket_errors"]:
                    sys.exit(f"{t['name']}: {r['non_2xx_share']:.3f} of answers were non-2xx (expected "
                             f"{t['expect']}), {r['socket_errors']} socket errors: the scenario is not "
                             f"what it claims")
                results[t["name"]].append(r)
                print(f"rep {rep + 1} {t['name']:<13} {r['rps']:>10.0f} req/s  p99 {r['p99_us']:>6} us  "
                      f"cpu {r['cpu_us_per_req']:.2f} us/req  other {r['other_cores']:.2f} cores", flush=True)
        report(results, args)
        if args.accuracy_seconds:
            accuracy(args, workdir, procs, base, login["redis_url"], redis_port)
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _can_connect(port):
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
        return True
    except OSError:
        return False


def _parent_chain(pid, root):
    """Whether `root` is `pid` or one of its ancestors."""
    try:
        while pid > 1:
            if pid == root:
                return True
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return False
    return False


def report(results, args):
    med = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
           for name, runs in results.items()}
    base = med["baseline"]
    noisy = max(r["other_cores"] for runs in results.values() for r in runs)
    print()
    print(f"median of {args.reps} x {args.seconds} s per target, wrk -t1 -c64, "
          f"{args.decisions} decisions, client pool {args.pool}")
    print(f"{'target':<13} {'req/s':>10} {'ratio':>6} {'p50 us':>7} {'p99 us':>7} {'p99 ratio':>9} "
          f"{'cpu us/req':>10} {'extra cpu':>9}")
    for name, m in med.items():
        print(f"{name:<13} {m['rps']:>10.0f} {m['rps'] / base['rps']:>6.2f} {m['p50_us']:>7.0f} "
              f"{m['p99_us']:>7.0f} {m['p99_us'] / max(base['p99_us'], 1):>9.2f} "
              f"{m['cpu_us_per_req']:>10.2f} {m['cpu_us_per_req'] - base['cpu_us_per_req']:>+9.2f}")
    flag = "NOISY: other processes used %.2f cores at some point" % noisy if noisy > 0.15 else \
        "quiet: other processes used at most %.2f cores" % noisy
    if "public" in med and "public-shared" in med:
        local, shared = med["public"], med["public-shared"]
        rps, p99 = shared["rps"] / local["rps"], shared["p99_us"] / max(local["p99_us"], 1)
        print(f"public-shared against public: req/s {rps:.2f}x (target >= 0.8: "
              f"{'met' if rps >= 0.8 else 'NOT met'}), p99 {p99:.2f}x (target <= 2: "
              f"{'met' if p99 <= 2 else 'NOT met'}); Redis script calls {shared['redis_calls_per_req']:.3f} "
              f"per request, Redis + LAPI CPU {shared['helpers_cpu_us_per_req']:.2f} us/req "
              f"(public: {local['helpers_cpu_us_per_req']:.2f})")
    print(flag)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"median": med, "runs": results, "other_cores_max": noisy,
                       "args": vars(args)}, f, indent=2)


def accuracy(args, workdir, procs, base, redis_url, redis_port, replicas=3, per_second=50, burst=100):
    """The shared limit's accuracy: `replicas` gates on one Redis, one client address hammered
    through all of them at once; their 2xx answers against one replica's budget."""
    gates = [start_gate(f"gate-accuracy-{i}", workdir, procs, per_second=per_second, burst=burst,
                        shared_limit=redis_url, **base) for i in range(replicas)]
    env = dict(os.environ, POOL="1", PREFIX="7")
    calls0 = redis_script_calls(redis_port)
    t0 = time.time()
    wrks = [subprocess.Popen(wrk_cmd(port, args.accuracy_seconds, connections=8), env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _, port in gates]
    outs = [subprocess.CompletedProcess(w.args, w.wait(timeout=args.accuracy_seconds + 60), *w.communicate())
            for w in wrks]
    t1 = time.time()
    calls = redis_script_calls(redis_port) - calls0
    for g, _ in gates:
        g.stop()
        procs.remove(g)
    summaries = [wrk_summary(o) for o in outs]
    requests = sum(s["requests"] for s in summaries)
    admitted = sum(s["requests"] - s["non_2xx"] for s in summaries)
    errors = sum(s["socket_errors"] for s in summaries)
    budget = burst + per_second * (t1 - t0)
    share = admitted / budget
    print()
    print(f"accuracy: {replicas} replicas, store = \"redis\", per_second {per_second}, burst {burst}, "
          f"one client, wrk -t1 -c8 each, {args.accuracy_seconds} s (t = {t1 - t0:.2f} s)")
    print(f"admitted {admitted} of {requests} requests; budget {budget:.0f} "
          f"(burst + per_second x t): {100 * share:.1f}%; Redis script calls {calls} "
          f"({calls / max(admitted, 1):.2f} per admitted request, {calls / max(requests, 1):.4f} per request)")
    tolerance = 0.5 if args.smoke else 0.1
    met = abs(share - 1) <= tolerance and not errors
    print(f"target: within {100 * tolerance:.0f}% of the budget: {'met' if met else 'NOT met'}"
          + (f" ({errors} socket errors)" if errors else ""))
    if args.json:
        with open(args.json) as f:
            data = json.load(f)
        data["accuracy"] = dict(replicas=replicas, per_second=per_second, burst=burst, seconds=t1 - t0,
                                requests=requests, admitted=admitted, budget=budget, share=share,
                                redis_script_calls=calls, socket_errors=errors)
        with open(args.json, "w") as f:
            json.dump(data, f, indent=2)
    if args.smoke and not met:
        sys.exit("accuracy: the shared limit admitted far from one replica's budget")


def memory(args):
    gate_bin, _, _ = build()
    procs = []
    workdir = tempfile.mkdtemp(prefix="jacker-gate-mem-")
    try:
        lapi = Lapi(workdir, procs)
        key_file = os.path.join(workdir, "bouncer_key")
        with open(key_file, "w") as f:
            f.write(lapi.bouncer_key("mem"))
        g, port = start_gate("gate-idle", workdir, procs, binary=gate_bin, key_file=key_file,
                             lapi_url=lapi.url, per_second=50, burst=100)
        time.sleep(2)
        print(f"idle, 0 decisions: RSS {rss_mb(g.pid):.1f} MB", flush=True)
        done = 0
        for target in (100_000, 1_000_000):
            lapi.import_bans(target - done, prefix=1, start=done)
            done = target
            g.stop()
            procs.remove(g)
            g, port = start_gate(f"gate-{target}", workdir, procs, binary=gate_bin, key_file=key_file,
                                 lapi_url=lapi.url, per_second=50, burst=100)
            time.sleep(3)
            print(f"idle, {target} decisions: RSS {rss_mb(g.pid):.1f} MB", flush=True)
        # Churn: decisions added and deleted every interval, 1M distinct clients through the limiter.
        g.stop()
        procs.remove(g)
        g, port = start_gate("gate-churn", workdir, procs, binary=gate_bin, key_file=key_file,
                             lapi_url=lapi.url, per_second=50, burst=100)
        samples = []
        t_end = time.time() + args.churn_seconds
        batch = 0
        while time.time() < t_end:
            start = 2_000_000 + batch * 5_000
            lapi.import_bans(5_000, prefix=4, start=start % 16_000_000)
            if batch % 6 == 5:
                # Every minute, every churned decision is deleted again.
                lapi.cscli("decisions", "delete", "--range", "4.0.0.0/8", "--contained")
            run_wrk(port, 10, {"POOL": "1000000", "PREFIX": "5"})
            samples.append((time.time(), rss_mb(g.pid)))
            print(f"churn t={samples[-1][0] - samples[0][0]:5.0f} s RSS {samples[-1][1]:.1f} MB", flush=True)
            batch += 1
        tail = [r for t, r in samples if t >= samples[-1][0] - 480]
        print(f"churn: max RSS {max(r for _, r in samples):.1f} MB; last 8 min "
              f"min {min(tail):.1f} max {max(tail):.1f} MB "
              f"(spread {100 * (max(tail) - min(tail)) / max(min(tail), 1):.1f}%)")
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a quick check that every scenario runs")
    ap.add_argument("--memory", action="store_true", help="the RSS measurements instead")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--decisions", type=int, default=100_000)
    ap.add_argument("--pool", type=int, default=100_000)
    ap.add_argument("--churn-seconds", type=int, default=600)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--targets", help="the targets to measure, comma-separated (default: all; "
                                      "the baseline is always measured)")
    ap.add_argument("--accuracy-seconds", type=int, default=10,
                    help="the shared limit's accuracy run (0: skip it)")
    ap.add_argument("--traefik", action="store_true",
                    help="through the real Traefik, against the CrowdSec plugin (traefik.py)")
    ap.add_argument("--plugin-src", help="with --traefik: a checkout of the CrowdSec bouncer plugin")
    ap.add_argument("--paths", default="alone,plugin,fa-h1,fa-h2,fa-mtls,login",
                    help="with --traefik: the paths to measure (plugin is the reference)")
    ap.add_argument("--max-response-body", type=int, default=4096,
                    help="with --traefik: the forwardAuth middlewares' maxResponseBodySize")
    ap.add_argument("--auth-request-headers", default="Accept,Cookie,X-Requested-With",
                    help="with --traefik: the forwardAuth middlewares' authRequestHeaders "
                         "(comma-separated; empty: all of the client's headers)")
    ap.add_argument("--profile", help="with --traefik: write perf and pprof profiles here")
    ap.add_argument("--concurrency", default="64,2",
                    help="with --traefik: wrk connections, comma-separated (default 64,2)")
    args = ap.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.paths = args.paths.split(",")
    args.targets = [t for t in args.targets.split(",") if t] if args.targets else None
    args.auth_request_headers = [h for h in args.auth_request_headers.split(",") if h]
    if "plugin" not in args.paths:
        args.paths.insert(0, "plugin")
    if args.smoke:
        args.reps, args.seconds, args.decisions, args.pool = 1, 1, 1_000, 1_000
        args.accuracy_seconds = min(args.accuracy_seconds, 2)
    for tool in ("wrk", "crowdsec", "cscli", "redis-server", "nginx"):
        need(tool)
    if args.traefik:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import traefik
        traefik.throughput(args)
    elif args.memory:
        memory(args)
    else:
        throughput(args)


if __name__ == "__main__":
    main()
