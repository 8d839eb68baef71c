//! Settings that are valid but probably not what the operator meant. `check-config` prints them
//! and `run` logs them at start-up.

use super::Config;

impl Config {
    /// One line per suspicious setting, each starting with its key.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = self.ignored.0.clone();
        let proxies = &self.server.trusted_proxies;
        if self.server.listen.ip().is_unspecified()
            && proxies.iter().all(|n| n.addr().is_loopback())
        {
            out.push(
                "server.trusted_proxies: only loopback is trusted while the gate listens on every \
                 interface; requests from Traefik will be judged on Traefik's own address and \
                 path (add Traefik's address or the traefik_proxy subnet)"
                    .to_owned(),
            );
        }
        if proxies.iter().any(|n| n.prefix_len() == 0) {
            out.push(
                "server.trusted_proxies: a /0 network trusts every client to name its own \
                 address and route"
                    .to_owned(),
            );
        }
        let clear_text_lapi = self.crowdsec.lapi.as_ref().is_some_and(|l| {
            l.url.scheme() == "http"
                && l.url
                    .host_str()
                    .is_some_and(|h| h != "localhost" && !h.starts_with("127."))
        });
        if clear_text_lapi {
            out.push(
                "crowdsec.lapi_url: plain http sends the bouncer key in clear text; fine on a \
                 private Docker network, not across hosts"
                    .to_owned(),
            );
        }
        let per_second = self.rate_limit.per_second;
        let enforced = 1_000_000 / 1_000_000_u32.div_ceil(per_second.max(1));
        if self.shared_limit.is_some() && per_second > 0 && enforced != per_second {
            out.push(format!(
                "rate_limit.per_second: the shared store counts in whole microseconds, so \
                 {per_second}/s is enforced as {enforced}/s across replicas"
            ));
        }
        out
    }
}
