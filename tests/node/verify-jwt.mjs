// Verifies a Carmenta access token with `jose`, given only the JWKS URL.
// usage: node verify-jwt.mjs <jwks_url> <token> <issuer> <audience>
// Prints the verified payload as JSON, or exits 1 with the error.
import { createRemoteJWKSet, jwtVerify } from "jose";

const [jwksUrl, token, issuer, audience] = process.argv.slice(2);
try {
  const jwks = createRemoteJWKSet(new URL(jwksUrl));
  const { payload, protectedHeader } = await jwtVerify(token, jwks, { issuer, audience });
  console.log(JSON.stringify({ payload, header: protectedHeader }));
} catch (e) {
  console.error(`${e.code ?? "ERR"}: ${e.message}`);
  process.exit(1);
}
