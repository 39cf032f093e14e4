// Passkeys on Carmenta's hosted pages: buttons with data-passkey="sign-in",
// "register" or "second-factor" run the WebAuthn ceremony against the JSON API
// and then follow data-next (a path the server already validated).
"use strict";
(function () {
  const b64 = {
    decode(s) {
      s = s.replace(/-/g, "+").replace(/_/g, "/");
      while (s.length % 4) s += "=";
      return Uint8Array.from(atob(s), (c) => c.charCodeAt(0)).buffer;
    },
    encode(buf) {
      let s = "";
      for (const byte of new Uint8Array(buf)) s += String.fromCharCode(byte);
      return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
    },
  };

  function creationOptions(o) {
    const pk = Object.assign({}, o.publicKey);
    pk.challenge = b64.decode(pk.challenge);
    pk.user = Object.assign({}, pk.user, { id: b64.decode(pk.user.id) });
    pk.excludeCredentials = (pk.excludeCredentials || []).map((c) => Object.assign({}, c, { id: b64.decode(c.id) }));
    return { publicKey: pk };
  }

  function requestOptions(o) {
    const pk = Object.assign({}, o.publicKey);
    pk.challenge = b64.decode(pk.challenge);
    pk.allowCredentials = (pk.allowCredentials || []).map((c) => Object.assign({}, c, { id: b64.decode(c.id) }));
    return { publicKey: pk };
  }

  function created(c) {
    return {
      id: c.id,
      rawId: b64.encode(c.rawId),
      type: c.type,
      response: {
        attestationObject: b64.encode(c.response.attestationObject),
        clientDataJSON: b64.encode(c.response.clientDataJSON),
        transports: c.response.getTransports ? c.response.getTransports() : [],
      },
      extensions: c.getClientExtensionResults ? c.getClientExtensionResults() : {},
    };
  }

  function asserted(c) {
    return {
      id: c.id,
      rawId: b64.encode(c.rawId),
      type: c.type,
      response: {
        authenticatorData: b64.encode(c.response.authenticatorData),
        clientDataJSON: b64.encode(c.response.clientDataJSON),
        signature: b64.encode(c.response.signature),
        userHandle: c.response.userHandle ? b64.encode(c.response.userHandle) : null,
      },
      extensions: c.getClientExtensionResults ? c.getClientExtensionResults() : {},
    };
  }

  async function post(path, body) {
    const res = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body || {}),
    });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error((data.error && data.error.message) || "request failed (" + res.status + ")");
    return data;
  }

  const ceremonies = {
    async "sign-in"(btn) {
      const email = document.getElementById("email");
      const start = await post("/v1/auth/passkey", email && email.value ? { email: email.value } : {});
      const cred = await navigator.credentials.get(requestOptions(start.options));
      await post("/v1/auth/passkey/finish", { ceremony_id: start.ceremony_id, credential: asserted(cred) });
    },
    async register(btn) {
      const start = await post("/v1/me/passkeys/register");
      const cred = await navigator.credentials.create(creationOptions(start.options));
      const name = document.getElementById("passkey-name");
      await post("/v1/me/passkeys/register/finish", {
        ceremony_id: start.ceremony_id,
        credential: created(cred),
        name: name && name.value ? name.value : undefined,
      });
    },
    async "second-factor"(btn) {
      const start = await post("/auth/mfa/passkey");
      const cred = await navigator.credentials.get(requestOptions(start.options));
      await post("/auth/mfa/passkey/finish", { ceremony_id: start.ceremony_id, credential: asserted(cred) });
    },
  };

  document.addEventListener("click", async (e) => {
    const btn = e.target.closest("[data-passkey]");
    if (!btn) return;
    e.preventDefault();
    const out = document.getElementById("passkey-status");
    btn.disabled = true;
    try {
      await ceremonies[btn.dataset.passkey](btn);
      window.location.assign(btn.dataset.next || "/auth/signed-in");
    } catch (err) {
      if (out) out.textContent = err.message || String(err);
      btn.disabled = false;
    }
  });
})();
