"""Second factors and passkeys on the hosted pages, in real Chromium (Debian's,
driven by Playwright for Python) with a CDP virtual authenticator (CTAP2,
internal, resident keys, user verification) standing in for the device.

Run by tests/api/passkeys_browser.rs against a live test server, with:
  BASE     the server's public URL (http://localhost:port: WebAuthn needs a domain)
  EMAIL    an email to sign up with
  PASSWORD its password
  SHOTS    the directory for screenshots

Signs up; turns on an authenticator app from the QR page (the code computed
here with hmac, RFC 6238); adds a passkey by its button; signs out; signs in
with the passkey alone; signs in with the password, is asked for the second
factor and answers with the passkey. Prints one JSON line; exits non-zero on
the first failed check.
"""

import base64
import hashlib
import hmac
import json
import os
import re
import struct
import time

from playwright.sync_api import sync_playwright

from common import check, errors, launch, shot, shots

BASE = os.environ["BASE"].rstrip("/")
EMAIL = os.environ["EMAIL"]
PASSWORD = os.environ["PASSWORD"]


def arrive(page, path, timeout=15000):
    """Waits for the page to reach BASE + path; on failure reports where it is."""
    try:
        page.wait_for_url(f"{BASE}{path}", timeout=timeout)
    except Exception:
        text = page.inner_text("body")[:500] if page.url.startswith("http") else ""
        check(False, f"expected {path}, at {page.url}: {text}")


def totp(secret_b32, t):
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    mac = hmac.new(key, struct.pack(">Q", int(t) // 30), hashlib.sha1).digest()
    off = mac[-1] & 0x0F
    code = (struct.unpack(">I", mac[off:off + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{code:06d}"


def main():
    with sync_playwright() as p:
        browser = launch(p)
        context = browser.new_context(viewport={"width": 900, "height": 900})
        page = context.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        cdp = context.new_cdp_session(page)
        cdp.send("WebAuthn.enable")
        auth = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
            "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
            "hasUserVerification": True, "isUserVerified": True, "automaticPresenceSimulation": True,
        }})["authenticatorId"]

        # Sign up through the hosted page.
        page.goto(f"{BASE}/auth/sign-up")
        page.fill("#email", EMAIL)
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        arrive(page, "/auth/signed-in")

        # Authenticator app: the QR page, a code computed here, the backup codes.
        page.goto(f"{BASE}/auth/account")
        shot(page, "01-account")
        page.click("text=Set up an authenticator app")
        page.wait_for_selector("img.qr")
        check(page.locator("img.qr").evaluate("i => i.naturalWidth > 0"), "the QR code image renders")
        shot(page, "02-totp-qr")
        secret = re.search(r"key ([A-Z2-7]+),", page.inner_text("main"))
        check(secret is not None, "the key is shown for typing in")
        page.fill("#code", totp(secret.group(1), time.time()))
        page.click("text=Turn on")
        page.wait_for_selector("ul.codes")
        codes = page.locator("ul.codes li").all_inner_texts()
        check(len(codes) == 10, f"ten backup codes, got {len(codes)}")
        shot(page, "03-backup-codes")

        # A passkey by its button (the virtual authenticator answers).
        page.goto(f"{BASE}/auth/account")
        page.fill("#passkey-name", "Chromium key")
        page.click("button[data-passkey=register]")
        page.wait_for_selector("text=Delete passkey Chromium key", timeout=15000)
        shot(page, "04-passkey-added")
        creds = cdp.send("WebAuthn.getCredentials", {"authenticatorId": auth})["credentials"]
        check(len(creds) == 1 and creds[0]["isResidentCredential"], "one discoverable credential on the device")

        # Signed out, the passkey alone signs in (no email typed).
        context.clear_cookies()
        page.goto(f"{BASE}/auth/sign-in")
        shot(page, "05-sign-in")
        page.click("button[data-passkey=sign-in]")
        arrive(page, "/auth/signed-in")
        check(any(c["name"] == "carmenta_session" for c in context.cookies()), "a session after the passkey")

        # The password then asks for the second factor; the passkey answers it.
        context.clear_cookies()
        page.goto(f"{BASE}/auth/sign-in")
        page.fill("#email", EMAIL)
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        arrive(page, "/auth/mfa")
        check(not any(c["name"] == "carmenta_session" for c in context.cookies()), "no session before the second factor")
        shot(page, "06-second-factor")
        page.click("button[data-passkey=second-factor]")
        arrive(page, "/auth/signed-in")
        check(any(c["name"] == "carmenta_session" for c in context.cookies()), "a session after the second factor")

        browser.close()
    print(json.dumps({"ok": True, "console_errors": errors, "screenshots": shots, "backup_codes": len(codes)}), flush=True)


if __name__ == "__main__":
    main()
