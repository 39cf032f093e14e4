// A real OpenID Provider for Carmenta's social sign-in tests: panva's
// oidc-provider (an OpenID Certified implementation) on 127.0.0.1:$PORT, one
// confidential client (client_secret_basic, PKCE required), and a test-only
// interaction that signs in whichever account the test chose last:
//   POST /test/login {"sub": "...", "claims": {...}}   (claims may be any JSON,
//   e.g. "email_verified": "true" as a string).
// Prints "listening" when ready.
import http from 'node:http';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const accounts = new Map();
let next = null;

const oidc = new Provider(issuer, {
  clients: [{
    client_id: process.env.CLIENT_ID || 'carmenta',
    client_secret: process.env.CLIENT_SECRET,
    redirect_uris: process.env.REDIRECT_URIS.split(','),
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: ['carmenta-test-cookie-key'] },
  async findAccount(ctx, sub) {
    if (!accounts.has(sub)) return undefined;
    return { accountId: sub, async claims() { return { sub, ...accounts.get(sub) }; } };
  },
});

async function interaction(req, res) {
  const details = await oidc.interactionDetails(req, res);
  const { prompt, params } = details;
  if (prompt.name === 'login') {
    if (!next) { res.statusCode = 400; return res.end('no test login set'); }
    return oidc.interactionFinished(req, res, { login: { accountId: next } }, { mergeWithLastSubmission: false });
  }
  const grant = details.grantId
    ? await oidc.Grant.find(details.grantId)
    : new oidc.Grant({ accountId: details.session.accountId, clientId: params.client_id });
  if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  const grantId = await grant.save();
  return oidc.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

const handler = oidc.callback();
http.createServer(async (req, res) => {
  try {
    if (req.method === 'POST' && req.url === '/test/login') {
      let body = '';
      for await (const chunk of req) body += chunk;
      const { sub, claims } = JSON.parse(body);
      accounts.set(sub, claims || {});
      next = sub;
      res.statusCode = 204;
      return res.end();
    }
    if (req.url.startsWith('/interaction/')) return await interaction(req, res);
    return handler(req, res);
  } catch (e) {
    res.statusCode = 500;
    res.end(String(e && e.stack || e));
  }
}).listen(port, '127.0.0.1', () => console.log('listening'));
