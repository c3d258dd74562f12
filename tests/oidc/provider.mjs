// A real OpenID Connect provider for imdsweb's single sign-on tests: panva's certified
// oidc-provider (package.json pins it; scripts/oidc.sh installs it), one confidential client, and
// a login page that checks the passwords of the accounts in a JSON file. The file is read again at
// every sign-in and every claims lookup, so a test can move someone between groups.
//
//   node provider.mjs --port 9000 --accounts accounts.json --client-id imdsweb \
//       --client-secret s3cret --redirect-uri http://testserver/oidc/callback/ [--clock-offset=-300]
//
// accounts.json: {"alice": {"password": "...", "email": "...", "name": "...", "groups": ["..."]}}
// --clock-offset shifts the provider's clock (seconds): its tokens are then issued in the past
// or the future, as a provider with a wrong clock would issue them.
// Prints "READY <issuer>" once it listens.

import { generateKeyPairSync, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { parseArgs } from "node:util";

import Provider from "oidc-provider";

const { values: args } = parseArgs({
  options: {
    port: { type: "string", default: "0" },
    host: { type: "string", default: "127.0.0.1" },
    issuer: { type: "string" },
    accounts: { type: "string" },
    "client-id": { type: "string", default: "imdsweb" },
    "client-secret": { type: "string", default: "imdsweb-test-secret" },
    "redirect-uri": { type: "string", multiple: true, default: [] },
    "clock-offset": { type: "string", default: "0" },
    "id-token-ttl": { type: "string", default: "600" },
  },
});

const offsetMs = Number(args["clock-offset"]) * 1000;
if (offsetMs) {
  const realNow = Date.now;
  Date.now = () => realNow() + offsetMs;
}

const accounts = () => JSON.parse(readFileSync(args.accounts, "utf8"));

const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: "jwk" }), kid: randomUUID(), alg: "RS256", use: "sig" };

const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(uid, error = "") {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Test identity provider: sign in</title></head>
<body><h1>Test identity provider</h1>
${error ? `<p id="error">${escape(error)}</p>` : ""}
<form method="post" action="/interaction/${escape(uid)}/login">
<label>Username <input id="login" name="login" autocomplete="username" required></label>
<label>Password <input id="password" name="password" type="password" autocomplete="current-password" required></label>
<button type="submit" id="submit">Sign in</button>
</form></body></html>`;
}

async function readForm(req) {
  let body = "";
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 10000) throw new Error("form too large");
  }
  return new URLSearchParams(body);
}

const port = Number(args.port);
const configuration = {
  clients: [
    {
      client_id: args["client-id"],
      client_secret: args["client-secret"],
      redirect_uris: args["redirect-uri"],
      grant_types: ["authorization_code"],
      response_types: ["code"],
      token_endpoint_auth_method: "client_secret_post",
    },
  ],
  claims: {
    openid: ["sub"],
    email: ["email", "email_verified"],
    profile: ["name", "preferred_username", "given_name", "family_name"],
    groups: ["groups"],
  },
  scopes: ["openid", "email", "profile", "groups"],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomUUID()] },
  features: { devInteractions: { enabled: false } },
  ttl: { IdToken: Number(args["id-token-ttl"]) },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, id) {
    const account = accounts()[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          email: account.email,
          email_verified: true,
          name: account.name,
          preferred_username: id,
          groups: account.groups || [],
        };
      },
    };
  },
};

const start = (issuer) => {
  const provider = new Provider(issuer, configuration);
  provider.use(async (ctx, next) => {
    const match = ctx.path.match(/^\/interaction\/([^/]+)(\/login)?$/);
    if (!match) return next();
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    ctx.set("Cache-Control", "no-store");
    if (ctx.method === "GET" && !match[2]) {
      ctx.type = "html";
      ctx.body = loginPage(details.uid);
      return undefined;
    }
    if (ctx.method !== "POST" || !match[2]) {
      ctx.status = 405;
      return undefined;
    }
    const form = await readForm(ctx.req);
    const login = form.get("login") || "";
    const account = accounts()[login];
    if (!account || account.password !== form.get("password")) {
      ctx.type = "html";
      ctx.status = 401;
      ctx.body = loginPage(details.uid, "Wrong username or password.");
      return undefined;
    }
    // A first-party client: the scopes it asks for are granted without a consent page.
    const grant = new provider.Grant({ accountId: login, clientId: details.params.client_id });
    grant.addOIDCScope(details.params.scope);
    const grantId = await grant.save();
    const redirectTo = await provider.interactionResult(ctx.req, ctx.res,
      { login: { accountId: login }, consent: { grantId } }, { mergeWithLastSubmission: false });
    ctx.redirect(redirectTo);
    return undefined;
  });
  return provider;
};

// The issuer names the port, so with --port 0 the provider is built once the port is known.
const server = createServer();
server.listen(port, args.host, () => {
  const issuer = args.issuer || `http://${args.host}:${server.address().port}`;
  const provider = start(issuer);
  server.on("request", provider.callback());
  console.log(`READY ${issuer}`);
});
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => server.close(() => process.exit(0)));
