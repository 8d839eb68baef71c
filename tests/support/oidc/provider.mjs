// A real OpenID provider (npm `oidc-provider`) standing in for Google in jacker-gate's login tests.
//
// Started by tests/support/oidc.rs as `node provider.mjs CONFIG.json`. The config names the port
// (always bound on 127.0.0.1; 0 picks a free one, so that no other process can take it first), the
// issuer (`{port}` in it stands for the port bound), one confidential client and the directory that
// holds the signing keys (kept across restarts, so a provider that was "down" comes back with the
// same keys). Once it serves, it prints `listening on 127.0.0.1:PORT as ISSUER`.
//
// Users are chosen by `login_hint` (else the configured default user); the interaction is handled
// in-process (login and consent granted at once), so a login is only redirects, no HTML. The ID token
// carries `email`, `email_verified` and `hd` as Google's does.
//
// Fault injection for the tests, under /__test/ (only ever on 127.0.0.1):
//   POST /__test/jwks?mode=own|foreign_same_kid|foreign_other_kid
//        what /jwks publishes: the real signing key, another key under the same `kid`, or another
//        key under another `kid` (tokens are always signed with the real key)
//   POST /__test/default_user?email=...   the user logged in when there is no `login_hint`
//   GET  /__test/state                    the current fault settings and counters, as JSON
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import http from 'node:http';
import path from 'node:path';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));

// The test users (TEST-PEERS.md / issue 3). `hd` is left out where Google leaves it out.
const USERS = {
  'alice@example.com': { sub: '100000000000000000001', email_verified: true, hd: 'example.com' },
  'bob@example.com': { sub: '100000000000000000002', email_verified: false, hd: 'example.com' },
  'mallory@evil.com': { sub: '100000000000000000003', email_verified: true, hd: 'evil.com' },
  'carol@gmail.com': { sub: '100000000000000000004', email_verified: true },
  'dave@example.com': { sub: '100000000000000000005', email_verified: true, hd: 'other.com' },
  'erin@example.com': { sub: '100000000000000000006', email_verified: true, hd: 'example.com' },
};

function loadKey(file, kid) {
  if (!existsSync(file)) {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const jwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
    writeFileSync(file, JSON.stringify(jwk), { mode: 0o600 });
  }
  return JSON.parse(readFileSync(file, 'utf8'));
}

const signingKey = loadKey(path.join(config.dir, 'signing-key.json'), 'test-signing-key');
const foreignKey = loadKey(path.join(config.dir, 'foreign-key.json'), 'test-foreign-key');
const publicOf = ({ kty, n, e, kid, alg, use }) => ({ kty, n, e, kid, alg, use });

const state = {
  jwks: config.jwks_mode || 'own',
  defaultUser: config.default_user || 'alice@example.com',
  logins: [],
  tokenRequests: 0,
};

// The provider is made once the port, and so the issuer, is known.
let provider;
let callback;

function makeProvider(issuer) {
  return new Provider(issuer, {
    clients: [
      {
        client_id: config.client_id,
        client_secret: config.client_secret,
        redirect_uris: config.redirect_uris,
        post_logout_redirect_uris: [],
        grant_types: ['authorization_code'],
        response_types: ['code'],
        token_endpoint_auth_method: config.token_endpoint_auth_method || 'client_secret_basic',
      },
    ],
    jwks: { keys: [signingKey] },
    cookies: { keys: [`cookie-key-${config.client_secret}`] },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified', 'hd'],
      profile: ['name'],
    },
    // Google puts the scope's claims in the ID token even when an access token is issued too.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      // Google does not offer these; turning them off keeps discovery close to Google's.
      introspection: { enabled: false },
      revocation: { enabled: false },
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    ttl: {
      AuthorizationCode: 60,
      IdToken: 3600,
      AccessToken: 3600,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
    },
    // The account id is the user's `sub` (numeric, as Google's); `login_hint` names the email.
    async findAccount(ctx, sub) {
      const email = Object.keys(USERS).find((e) => USERS[e].sub === sub);
      if (!email) return undefined;
      const user = USERS[email];
      return {
        accountId: sub,
        async claims() {
          const claims = { sub, email, email_verified: user.email_verified, name: email.split('@')[0] };
          if (user.hd) claims.hd = user.hd;
          return claims;
        },
      };
    },
    renderError(ctx, out) {
      ctx.type = 'application/json';
      ctx.body = JSON.stringify(out);
    },
  });
}

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params } = details;
  let result;
  if (prompt.name === 'login') {
    const hint = typeof params.login_hint === 'string' && params.login_hint !== '' ? params.login_hint : state.defaultUser;
    if (!USERS[hint]) {
      result = { error: 'access_denied', error_description: `unknown test user ${hint}` };
    } else {
      state.logins.push(hint);
      result = { login: { accountId: USERS[hint].sub } };
    }
  } else if (prompt.name === 'consent') {
    const accountId = details.session.accountId;
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    if (missing.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    const grantId = await grant.save();
    result = details.grantId ? {} : { consent: { grantId } };
  } else {
    result = { error: 'access_denied', error_description: `unhandled prompt ${prompt.name}` };
  }
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
}

function json(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  if (!provider) {
    json(res, 503, { error: 'starting' });
    return;
  }
  try {
    if (url.pathname.startsWith('/interaction/')) {
      await interaction(req, res);
      return;
    }
    if (url.pathname === '/__test/jwks' && req.method === 'POST') {
      const mode = url.searchParams.get('mode');
      if (!['own', 'foreign_same_kid', 'foreign_other_kid'].includes(mode)) {
        json(res, 400, { error: `unknown mode ${mode}` });
        return;
      }
      state.jwks = mode;
      json(res, 200, state);
      return;
    }
    if (url.pathname === '/__test/default_user' && req.method === 'POST') {
      const email = url.searchParams.get('email');
      if (!USERS[email]) {
        json(res, 400, { error: `unknown user ${email}` });
        return;
      }
      state.defaultUser = email;
      json(res, 200, state);
      return;
    }
    if (url.pathname === '/__test/state') {
      json(res, 200, state);
      return;
    }
    if (url.pathname === '/jwks' && state.jwks !== 'own') {
      const key =
        state.jwks === 'foreign_same_kid'
          ? { ...publicOf(foreignKey), kid: signingKey.kid }
          : publicOf(foreignKey);
      json(res, 200, { keys: [key] });
      return;
    }
    if (url.pathname === '/token') state.tokenRequests += 1;
    callback(req, res);
  } catch (err) {
    console.error(`request ${req.method} ${req.url} failed:`, err);
    if (!res.headersSent) json(res, 500, { error: 'server_error', error_description: String(err) });
  }
});

server.listen(config.port, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = config.issuer.replaceAll('{port}', String(port));
  provider = makeProvider(issuer);
  provider.proxy = false;
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  provider.on('authorization.error', (ctx, err) => console.error('authorization.error', err.message, err.error_description || ''));
  provider.on('grant.error', (ctx, err) => console.error('grant.error', err.message, err.error_description || ''));
  provider.on('grant.success', () => console.error('grant.success'));
  callback = provider.callback();
  console.error(`oidc-provider ${randomUUID()} listening on 127.0.0.1:${port} as ${issuer}`);
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
