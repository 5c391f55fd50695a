// A real OpenID provider (oidc-provider) for the JWKS tests: HTTPS on 127.0.0.1,
// client-credentials access tokens as JWTs carrying the Live API's claims.
//
//   node provider.mjs CONFIG.json
//
// CONFIG.json (written by the test; restart the provider to publish other keys):
//   issuer     "https://127.0.0.1:PORT"
//   port       the port to listen on (127.0.0.1)
//   cert, key  PEM files of the server's TLS certificate and key
//   keys       private JWKs (each with "kid" and "alg"): the key set published at /jwks
//   resource   the audience of the access tokens (the Live API)
//   scope      every scope a client may be granted
//   clients    [{client_id, client_secret, sign_kid, claims}]: sign_kid picks the key
//              that signs the client's tokens, claims are added to them
//              (user_type, organization, department, ...)
//
// Prints "ready <issuer>" on stdout once it listens.
import fs from 'node:fs';
import https from 'node:https';
import process from 'node:process';

import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const clients = new Map(config.clients.map((c) => [c.client_id, c]));
const algOf = new Map(config.keys.map((k) => [k.kid, k.alg]));

const provider = new Provider(config.issuer, {
  clients: config.clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_post',
    scope: config.scope,
  })),
  jwks: { keys: config.keys },
  scopes: config.scope.split(' '),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // Clients that name no resource get the Live API.
      defaultResource: async () => config.resource,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resource, client) => {
        if (resource !== config.resource) {
          throw new Error(`unknown resource ${resource}`);
        }
        const kid = clients.get(client.clientId).sign_kid;
        return {
          scope: config.scope,
          audience: config.resource,
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: algOf.get(kid), kid } },
        };
      },
    },
  },
  extraTokenClaims: async (ctx, token) => clients.get(token.clientId)?.claims,
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

const server = https.createServer(
  { cert: fs.readFileSync(config.cert), key: fs.readFileSync(config.key) },
  provider.callback(),
);
server.listen(config.port, '127.0.0.1', () => {
  console.log(`ready ${config.issuer}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
