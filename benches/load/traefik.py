"""The load benchmark through the real Traefik: what a user pays per request, path by path.

One Traefik (the version the deployment pins) routes by Host header to one upstream (the bare
hyper server); each path under test is one router:

  alone         Traefik alone, no middleware
  plugin        the seed stack's edge: the CrowdSec bouncer plugin (stream mode, local plugin
                from --plugin-src) and Traefik's rateLimit (50/s, burst 100, per client address)
  fa-h1         forwardAuth -> jacker-gate over plain HTTP/1.1
  fa-h2         forwardAuth -> jacker-gate over TLS (Traefik negotiates HTTP/2)
  fa-mtls       the same with a client certificate, as the compose deployment runs it
  login         fa-mtls on a route that needs a login, with a valid session (Redis store)
  fa-mtls-2t    (only when asked for with --paths) fa-mtls to a gate with worker_threads = 2

Every gate and the plugin sync the same N decisions from one real CrowdSec LAPI; clients come
from a pool of addresses through X-Forwarded-For, which Traefik's entrypoint trusts from
127.0.0.1 (as from a load balancer) and passes on (trustForwardHeader); the gates' rate limit is
the default 50/s with burst 100. The paths are interleaved at each concurrency (wrk -t1 -cC),
and the median of the repetitions is reported with Traefik's and the gate's CPU per request,
new TCP connections per request (the machine's TCP ActiveOpens, less wrk's own), p50/p99, and the
CPU used by everything else on the machine (a run above 0.15 cores of that is flagged NOISY).

  python3 benches/load/run.py --traefik --plugin-src DIR    # DIR: a checkout of
      maxlerebourg/crowdsec-bouncer-traefik-plugin (v1.7.1, with its vendor/ directory)

With --profile OUT, the first repetition at the first concurrency also records, per path, a
`perf` profile of the gate (OUT/gate-PATH.perf; `perf report -i`) and Traefik's own Go CPU
profile (OUT/traefik-PATH.pb.gz, from its pprof endpoint; `python3 benches/load/pprof_top.py`).
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import run as base

LUA = os.path.join(base.ROOT, "benches", "load", "traefik.lua")
TRAEFIK = os.path.join(os.environ.get("HOME", "/root"), ".cache", "jacker-gate", "traefik-3.7.15",
                       "bin", "traefik")
PLUGIN_MODULE = "github.com/maxlerebourg/crowdsec-bouncer-traefik-plugin"
PATHS = ["alone", "plugin", "fa-h1", "fa-h2", "fa-mtls", "login", "fa-mtls-2t"]


def tcp_active_opens():
    with open("/proc/net/snmp") as f:
        lines = [l.split() for l in f if l.startswith("Tcp:")]
    return int(lines[1][lines[0].index("ActiveOpens")])


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d):
    """A CA, the gates' certificate for 127.0.0.1 and a client certificate for Traefik."""
    os.makedirs(d)
    p = lambda n: os.path.join(d, n)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-days", "2", "-subj", "/CN=bench CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout", p("ca.key"), "-out", p("ca.pem"))
    for name, ext in (("gate", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
                      ("traefik", "extendedKeyUsage=clientAuth\n")):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-subj", f"/CN={name}", "-keyout", p(f"{name}.key"), "-out", p(f"{name}.csr"))
        with open(p(f"{name}.ext"), "w") as f:
            f.write(ext)
        openssl("x509", "-req", "-in", p(f"{name}.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
                "-CAcreateserial", "-days", "2", "-extfile", p(f"{name}.ext"), "-out", p(f"{name}.pem"))
    return {k: p(v) for k, v in (("ca", "ca.pem"), ("cert", "gate.pem"), ("key", "gate.key"),
                                 ("client_cert", "traefik.pem"), ("client_key", "traefik.key"))}


def start_gate(name, workdir, procs, binary, tls=None, login=None, threads=None, **kw):
    port = base.free_port()
    cfg = base.gate_config(port, login=login, **kw)
    if threads:
        cfg = cfg.replace("[server]\n", f"[server]\nworker_threads = {threads}\n", 1)
    if tls:
        server = f'tls_cert_file = "{tls["cert"]}"\ntls_key_file = "{tls["key"]}"\n'
        if tls.get("client_ca"):
            server += f'tls_client_ca_file = "{tls["client_ca"]}"\n'
        cfg = cfg.replace("[server]\n", "[server]\n" + server, 1)
        cfg = cfg.replace(f'public_url = "http://127.0.0.1:{port}"',
                          f'public_url = "https://127.0.0.1:{port}"')
    path = os.path.join(workdir, f"{name}.toml")
    with open(path, "w") as f:
        f.write(cfg)
    proc = base.Proc(name, [binary, "run", "--config", path], workdir)
    procs.append(proc)
    check = [binary, "healthcheck", "--config", path]
    base.wait_until(f"gate {name} healthy",
                    lambda: subprocess.run(check, capture_output=True).returncode == 0, 60)
    scheme = "https" if tls else "http"
    return proc, f"{scheme}://127.0.0.1:{port}"


def traefik_files(workdir, web, ping, upstream, lapi, bouncer_key, gates, pki, debug_port,
                  max_body, request_headers):
    static = os.path.join(workdir, "traefik.toml")
    dynamic = os.path.join(workdir, "dynamic.toml")
    with open(static, "w") as f:
        f.write(f"""[entryPoints.web]
address = "127.0.0.1:{web}"
[entryPoints.web.forwardedHeaders]
trustedIPs = ["127.0.0.1/32"]
[entryPoints.web.http]
aliasHeadersStrategy = "delete"
[entryPoints.ping]
address = "127.0.0.1:{ping}"
[ping]
entryPoint = "ping"
[entryPoints.traefik]
address = "127.0.0.1:{debug_port}"
[api]
insecure = true
debug = true
dashboard = false
[providers.file]
filename = "{dynamic}"
[log]
level = "ERROR"
filePath = "{workdir}/traefik-errors.log"
[experimental.localPlugins.crowdsec]
moduleName = "{PLUGIN_MODULE}"
""")
    def fa(name, url, tls):
        """A forwardAuth middleware to the gate at `url`; `tls`: None, "tls" or "mtls"."""
        mw = f"""
[http.middlewares.{name}.forwardAuth]
address = "{url}/auth"
trustForwardHeader = true
authResponseHeaders = ["X-Auth-Request-Email", "X-Auth-Request-User", "X-Forwarded-User"]
maxResponseBodySize = {max_body}
"""
        if request_headers:
            mw += f"authRequestHeaders = [{', '.join(repr(h).replace(chr(39), chr(34)) for h in request_headers)}]\n"
        if tls:
            mw += f"[http.middlewares.{name}.forwardAuth.tls]\nca = \"{pki['ca']}\"\n"
        if tls == "mtls":
            mw += f"cert = \"{pki['client_cert']}\"\nkey = \"{pki['client_key']}\"\n"
        return mw

    routers = {"alone": [], "plugin": ["crowdsec", "ratelimit"], "fa-h1": ["fa-h1"],
               "fa-h2": ["fa-h2"], "fa-mtls": ["fa-mtls"], "login": ["fa-login"],
               "fa-mtls-2t": ["fa-mtls-2t"]}
    with open(dynamic, "w") as f:
        f.write(f"""[[http.services.upstream.loadBalancer.servers]]
url = "http://127.0.0.1:{upstream}"

[http.middlewares.crowdsec.plugin.crowdsec]
enabled = true
crowdsecMode = "stream"
updateIntervalSeconds = 10
crowdsecLapiScheme = "http"
crowdsecLapiHost = "127.0.0.1:{lapi}"
crowdsecLapiKey = "{bouncer_key}"
forwardedHeadersTrustedIPs = ["127.0.0.0/8"]

[http.middlewares.ratelimit.rateLimit]
average = 50
burst = 100
period = "1s"
[http.middlewares.ratelimit.rateLimit.sourceCriterion.ipStrategy]
depth = 1
""")
        f.write(fa("fa-h1", gates["fa-h1"], None))
        f.write(fa("fa-h2", gates["fa-h2"], "tls"))
        f.write(fa("fa-mtls", gates["fa-mtls"], "mtls"))
        f.write(fa("fa-mtls-2t", gates["fa-mtls-2t"], "mtls"))
        f.write(fa("fa-login", gates["login"], "mtls"))
        for name, mws in routers.items():
            f.write(f"""
[http.routers.{name}]
rule = "Host(`{name}.bench`)"
entryPoints = ["web"]
service = "upstream"
middlewares = [{", ".join(f'"{m}"' for m in mws)}]
""")
    return static


def run_wrk(port, conns, seconds, env_extra):
    env = dict(os.environ)
    env.update(env_extra)
    out = subprocess.run([base.need("wrk"), "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", LUA,
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, env=env,
                         timeout=seconds + 60)
    line = next((l for l in out.stdout.splitlines() if l.startswith("JSON ")), None)
    if line is None:
        sys.exit(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")
    return json.loads(line[5:])


def measure(path, conns, seconds, web, traefik_pid, gate_pid, env, helper_pids, profile=None):
    """One wrk run of `path`; CPU of Traefik, the gate, and everything else on the machine.
    With `profile` (OUT, debug port): a perf profile of the gate and Traefik's pprof during it."""
    recorders = []
    if profile:
        out, debug_port = profile
        span = max(1, seconds - 2)
        if gate_pid:
            recorders.append(subprocess.Popen(
                ["perf", "record", "-F", "999", "-g", "-p", str(gate_pid), "-o",
                 os.path.join(out, f"gate-{path}.perf"), "--", "sleep", str(span)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        recorders.append(subprocess.Popen(
            ["python3", "-c", "import sys, urllib.request; open(sys.argv[2], 'wb').write("
             "urllib.request.urlopen(sys.argv[1], timeout=120).read())",
             f"http://127.0.0.1:{debug_port}/debug/pprof/profile?seconds={span}",
             os.path.join(out, f"traefik-{path}.pb.gz")]))
    wrk_before = os.times()
    t_cpu0 = base.proc_cpu_seconds(traefik_pid)
    g_cpu0 = base.proc_cpu_seconds(gate_pid) if gate_pid else 0.0
    h_cpu0 = sum(base.proc_cpu_seconds(p) for p in helper_pids)
    busy0, opens0, t0 = base.machine_busy_seconds(), tcp_active_opens(), time.time()
    s = run_wrk(web, conns, seconds, env)
    busy1, opens1, t1 = base.machine_busy_seconds(), tcp_active_opens(), time.time()
    t_cpu = base.proc_cpu_seconds(traefik_pid) - t_cpu0
    g_cpu = (base.proc_cpu_seconds(gate_pid) - g_cpu0) if gate_pid else 0.0
    h_cpu = sum(base.proc_cpu_seconds(p) for p in helper_pids) - h_cpu0
    for r in recorders:
        r.wait(timeout=120)
    wrk_after = os.times()
    # Children's CPU: wrk's, and the profilers' when they ran (counted as wrk's, not as noise).
    wrk_cpu = (wrk_after.children_user - wrk_before.children_user) + (
        wrk_after.children_system - wrk_before.children_system)
    n = max(s["requests"], 1)
    return {
        "rps": n / (s["duration_us"] / 1e6),
        "p50_us": s["p50_us"],
        "p99_us": s["p99_us"],
        "traefik_us": t_cpu / n * 1e6,
        "gate_us": g_cpu / n * 1e6 if gate_pid else None,
        "new_conns_per_req": max(0, opens1 - opens0 - conns) / n,
        # What is not Traefik, the gate, wrk, the upstream, the LAPI or Redis.
        "other_cores": max(0.0, (busy1 - busy0) - t_cpu - g_cpu - h_cpu - wrk_cpu) / (t1 - t0),
        "non_2xx_share": s["non_2xx"] / n,
        "socket_errors": s["socket_errors"],
    }


def throughput(args):
    if not args.plugin_src or not os.path.isfile(os.path.join(args.plugin_src, "bouncer.go")):
        sys.exit("--plugin-src DIR: a checkout of maxlerebourg/crowdsec-bouncer-traefik-plugin "
                 "(with vendor/), for the seed stack's path")
    if not os.access(TRAEFIK, os.X_OK):
        sys.exit(f"Traefik is not installed at {TRAEFIK}: {base.INSTALL_HINT}")
    gate_bin, bare_bin, mint_bin = base.build()
    procs = []
    workdir = tempfile.mkdtemp(prefix="jacker-gate-traefik-load-")
    try:
        lapi = base.Lapi(workdir, procs)
        key_file = os.path.join(workdir, "bouncer_key")
        with open(key_file, "w") as f:
            f.write(lapi.bouncer_key("gates"))
        plugin_key = lapi.bouncer_key("plugin")
        t = time.time()
        lapi.import_bans(args.decisions, prefix=1)
        print(f"imported {args.decisions} decisions in {time.time() - t:.1f} s", flush=True)

        redis, login, cookie = base.login_store(workdir, procs, gate_bin, mint_bin)
        pki = make_pki(os.path.join(workdir, "pki"))
        tls = {"cert": pki["cert"], "key": pki["key"]}
        mtls = dict(tls, client_ca=pki["ca"])

        common = dict(binary=gate_bin, key_file=key_file, lapi_url=lapi.url, per_second=50, burst=100)
        login = dict(login, cache_ttl="5s")
        gates = {}
        gate_pids = {}
        for name, kw in (("fa-h1", {}), ("fa-h2", {"tls": tls}), ("fa-mtls", {"tls": mtls}),
                         ("login", {"tls": mtls, "login": login}),
                         ("fa-mtls-2t", {"tls": mtls, "threads": 2})):
            proc, url = start_gate(f"gate-{name}", workdir, procs, **common, **kw)
            gates[name], gate_pids[name] = url, proc.pid

        upstream = base.free_port()
        bare = base.Proc("upstream", [bare_bin, f"127.0.0.1:{upstream}"], workdir)
        procs.append(bare)
        base.wait_until("the upstream", lambda: base.http_status(f"http://127.0.0.1:{upstream}/") == 200, 10)

        plugins = os.path.join(workdir, "plugins-local", "src", os.path.dirname(PLUGIN_MODULE))
        os.makedirs(plugins)
        os.symlink(os.path.abspath(args.plugin_src), os.path.join(plugins, os.path.basename(PLUGIN_MODULE)))
        web, ping, debug_port = base.free_port(), base.free_port(), base.free_port()
        static = traefik_files(workdir, web, ping, upstream, lapi.port, plugin_key, gates, pki,
                               debug_port, args.max_response_body, args.auth_request_headers)
        # In workdir: Traefik finds local plugins under ./plugins-local.
        traefik = base.Proc("traefik", [TRAEFIK, f"--configFile={static}"], workdir, cwd=workdir)
        procs.append(traefik)
        base.wait_until("Traefik", lambda: base.http_status(f"http://127.0.0.1:{ping}/ping") == 200, 60)
        # The plugin's first stream pull (100k decisions) and the gates' syncs settle.
        time.sleep(15)

        helper_pids = [bare.pid, redis.pid, lapi.proc.pid]
        pool = str(args.pool)
        envs = {p: {"POOL": pool, "PREFIX": "2", "HOST": f"{p}.bench"} for p in PATHS}
        envs["login"]["COOKIE"] = cookie
        # Every path answers 200 for an unbanned client and 403 for a banned one: the scenario is
        # what it claims.
        for p in PATHS:
            if p == "alone":
                continue
            banned = run_wrk(web, 1, 1, {"POOL": "1", "PREFIX": "1", "HOST": f"{p}.bench",
                                        "COOKIE": cookie if p == "login" else ""})
            if banned["non_2xx"] != banned["requests"]:
                sys.exit(f"{p}: a banned client got {banned['requests'] - banned['non_2xx']} answers "
                         f"in 2xx; the path does not enforce the decisions")

        paths = [p for p in PATHS if p in args.paths]
        results = {(c, p): [] for c in args.concurrency for p in paths}
        for c in args.concurrency:
            for rep in range(args.reps):
                for p in paths:
                    profile = None
                    if args.profile and rep == 0 and c == args.concurrency[0]:
                        os.makedirs(args.profile, exist_ok=True)
                        profile = (args.profile, debug_port)
                    r = measure(p, c, args.seconds, web, traefik.pid, gate_pids.get(p), envs[p],
                                helper_pids, profile)
                    if r["non_2xx_share"] > 0.01 or r["socket_errors"]:
                        sys.exit(f"{p} at {c}: {r['non_2xx_share']:.3f} of answers were not 2xx, "
                                 f"{r['socket_errors']} socket errors; see {workdir}")
                    results[(c, p)].append(r)
                    gate = f"{r['gate_us']:.1f}" if r["gate_us"] is not None else "-"
                    print(f"c{c} rep {rep + 1} {p:<8} {r['rps']:>8.0f} req/s  p99 {r['p99_us']:>6} us  "
                          f"traefik {r['traefik_us']:.0f} us/req  gate {gate} us/req  "
                          f"new conns {r['new_conns_per_req']:.4f}/req  other {r['other_cores']:.2f} cores",
                          flush=True)
        for p in paths:
            if p in gate_pids:
                print(f"RSS gate {p}: {base.rss_mb(gate_pids[p]):.1f} MB")
        print(f"RSS traefik: {base.rss_mb(traefik.pid):.1f} MB")
        report(results, args, paths)
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def report(results, args, paths):
    print()
    print(f"median of {args.reps} x {args.seconds} s per path, wrk -t1, {args.decisions} decisions, "
          f"client pool {args.pool}")
    noisy = max(r["other_cores"] for runs in results.values() for r in runs)
    for c in args.concurrency:
        plugin = statistics.median(r["rps"] for r in results[(c, "plugin")])
        print(f"\n{c} concurrent clients")
        print(f"| path | req/s | × plugin | p50 µs | p99 µs | Traefik CPU µs/req | gate CPU µs/req "
              f"| new conns/req | other cores |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for p in paths:
            runs = results[(c, p)]
            med = lambda k: statistics.median(r[k] for r in runs)
            gate = f"{med('gate_us'):.1f}" if runs[0]["gate_us"] is not None else "–"
            print(f"| {p} | {med('rps'):,.0f} | {med('rps') / plugin:.2f} | {med('p50_us'):,.0f} | "
                  f"{med('p99_us'):,.0f} | {med('traefik_us'):.0f} | {gate} | "
                  f"{med('new_conns_per_req'):.4f} | {max(r['other_cores'] for r in runs):.2f} |")
    print("NOISY: other processes used %.2f cores at some point" % noisy if noisy > 0.15 else
          "quiet: other processes used at most %.2f cores" % noisy)
