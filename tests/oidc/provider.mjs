// A real OpenID provider for the meshops tests: oidc-provider 8 (OpenID Certified)
// on loopback, over HTTPS with a certificate the test fixture makes.
//
// Started and stopped (by pid) by tests/oidc/fixture.py. Usage:
//   node provider.mjs serve --jwks FILE --cert FILE --key FILE [--port N] [--host 127.0.0.1]
//       prints "READY <issuer>" on stdout once it listens (port 0: the kernel picks one;
//       restart with --port N to keep the issuer after a key rotation)
//   node provider.mjs rotate --jwks FILE [--drop-old]
//       prepends a new RS256 signing key (oidc-provider signs with the first key of its
//       JWKS); --drop-old removes the previous keys, so their tokens stop verifying.
//
// What it serves: discovery, JWKS, the device authorization grant (RFC 8628, POST
// /device/auth, the /device user pages) and devInteractions (a login and a consent
// page a browser can fill). Its keys live in the --jwks file, so they survive a
// restart. Accounts: a fixed list with stable subjects; any password is accepted
// (devInteractions asks for none that it checks). Clients: "meshops" (the one orgs
// configure) and "other-client" (for wrong-audience tests), both public native
// clients that may use only the device grant.
import { readFileSync, writeFileSync, renameSync } from 'node:fs';
import { createServer } from 'node:https';
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';
import { generateKeyPair, exportJWK } from 'jose';

const ACCOUNTS = {
  alice: { email: 'alice@example.com', name: 'Alice' },
  bob: { email: 'bob@example.com', name: 'Bob' },
  carol: { email: 'carol@example.com', name: 'Carol' },
  dave: { email: 'dave@example.com', name: 'Dave' },
  mallory: { email: 'mallory@example.com', name: 'Mallory' },
};

const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';

function client(id) {
  return {
    client_id: id,
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: [DEVICE_GRANT],
    response_types: [],
    redirect_uris: [],
  };
}

async function newKey() {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = await exportJWK(privateKey);
  return { ...jwk, kid: randomBytes(8).toString('hex'), alg: 'RS256', use: 'sig' };
}

function readJwks(path) {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    if (err.code === 'ENOENT') return { keys: [] };
    throw err;
  }
}

function writeJwks(path, jwks) {
  const tmp = `${path}.tmp`;
  writeFileSync(tmp, JSON.stringify(jwks), { mode: 0o600 });
  renameSync(tmp, path);
}

async function rotate(opts) {
  const jwks = readJwks(opts.jwks);
  const keys = [await newKey(), ...(opts['drop-old'] ? [] : jwks.keys)];
  writeJwks(opts.jwks, { keys });
  process.stdout.write(`ROTATED ${keys[0].kid}\n`);
}

async function serve(opts) {
  let jwks = readJwks(opts.jwks);
  if (jwks.keys.length === 0) {
    jwks = { keys: [await newKey()] };
    writeJwks(opts.jwks, jwks);
  }
  let handler = (req, res) => { res.statusCode = 503; res.end(); };
  const server = createServer({
    cert: readFileSync(opts.cert), key: readFileSync(opts.key),
  }, (req, res) => handler(req, res));
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(opts.port || 0), opts.host || '127.0.0.1', resolve);
  });
  const issuer = `https://${opts.host || '127.0.0.1'}:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [client('meshops'), client('other-client')],
    jwks,
    features: {
      devInteractions: { enabled: true },
      deviceFlow: { enabled: true },
      revocation: { enabled: false },
    },
    // the scope's claims (email) go into the ID token, which is all the hub sees
    conformIdTokenClaims: false,
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
    scopes: ['openid', 'email', 'profile'],
    cookies: { keys: [randomBytes(16).toString('hex')] },
    async findAccount(ctx, sub) {
      const account = ACCOUNTS[sub];
      if (!account) return undefined;
      return {
        accountId: sub,
        async claims() {
          return { sub, email: account.email, email_verified: true, name: account.name };
        },
      };
    },
    ttl: { DeviceCode: 600, IdToken: 3600, AccessToken: 3600, Grant: 3600, Session: 3600, Interaction: 600 },
  });
  provider.on('server_error', (ctx, err) => process.stderr.write(`server_error: ${err.stack}\n`));
  handler = provider.callback();
  process.stdout.write(`READY ${issuer}\n`);
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    jwks: { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' },
    port: { type: 'string' },
    host: { type: 'string' },
    'drop-old': { type: 'boolean' },
  },
});
const command = positionals[0];
if (!values.jwks || !['serve', 'rotate'].includes(command)) {
  process.stderr.write('usage: provider.mjs serve|rotate --jwks FILE [...]\n');
  process.exit(2);
}
if (command === 'rotate') await rotate(values);
else await serve(values);
