// The OIDC provider of the identity browser tests: oauth2-mock-server on 127.0.0.1:<port>.
// It signs in whoever the test last wrote to <claims.json> (the authorize endpoint has no
// login form), adds those claims to the ID token and userinfo, verifies PKCE, and appends one
// line to <claims.json>.log for every end-session request, so a test can see the IdP sign-out.
import { appendFileSync, readFileSync } from "node:fs";
import { OAuth2Server } from "oauth2-mock-server";

const [port, claimsPath] = process.argv.slice(2);
const claims = () => JSON.parse(readFileSync(claimsPath, "utf8"));
const server = new OAuth2Server();
await server.issuer.keys.generate("RS256");
server.service.on("beforeTokenSigning", (token) => {
  Object.assign(token.payload, claims());
});
server.service.on("beforeUserinfo", (response) => {
  response.body = claims();
});
server.service.on("beforePostLogoutRedirect", () => {
  appendFileSync(`${claimsPath}.log`, "endsession\n");
});
await server.start(Number(port), "127.0.0.1");
console.log(`issuer ${server.issuer.url}`);
