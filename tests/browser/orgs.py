"""The organization pages in real Chromium (Debian's, driven by Playwright for
Python): two people, each in their own browser context.

Run by tests/api/orgs_browser.rs against a live test server, with:
  BASE      the server's public URL
  OWNER     the email the owner signs up with
  INVITEE   the email the owner invites (no account yet)
  PASSWORD  the owner's password
  HANDOFF   a file the Rust test writes the mailed invitation token into
  SHOTS     the directory for screenshots

The owner signs up, creates an organization on /auth/orgs, invites two emails
by the form and revokes the second invitation by its button. The invitee opens
the mailed link, creates an account and joins in one step, sees the page as a
member (no invitation form), switches to the organization; the owner makes them
an admin by the role select; they leave. The owner's member list shows the
invitee while a member and not after; the owner renames the organization. Prints one
JSON line; exits non-zero on the first failed check.
"""

import json
import os
import re
import time

from playwright.sync_api import sync_playwright

from common import check, errors, launch, shot, shots

BASE = os.environ["BASE"].rstrip("/")
OWNER = os.environ["OWNER"]
INVITEE = os.environ["INVITEE"]
PASSWORD = os.environ["PASSWORD"]
HANDOFF = os.environ["HANDOFF"]


def arrive(page, pattern, timeout=15000):
    """Waits for the page's URL to match BASE + pattern (a regex); on failure reports where it is."""
    try:
        page.wait_for_url(re.compile(re.escape(BASE) + pattern + "$"), timeout=timeout)
    except Exception:
        text = page.inner_text("body")[:500] if page.url.startswith("http") else ""
        check(False, f"expected {pattern}, at {page.url}: {text}")


def text(page):
    return page.inner_text("main") if page.locator("main").count() else page.inner_text("body")


def watch(page):
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page


def goto_expecting(page, url, status):
    """Opens url, checks its status, and drops the console's report of that
    expected status (Chromium logs every 4xx document as a failed load)."""
    before = len(errors)
    got = page.goto(url).status
    check(got == status, f"{url} answered {got}, expected {status}")
    page.wait_for_timeout(100)
    errors[before:] = [e for e in errors[before:] if f"status of {status}" not in e]


def handed_token(timeout=30):
    """The invitation token the Rust test read from the mail outbox."""
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(HANDOFF):
            token = open(HANDOFF).read().strip()
            if token:
                return token
        time.sleep(0.2)
    check(False, "no invitation token was handed over")


def main():
    with sync_playwright() as p:
        browser = launch(p)
        owner = watch(browser.new_context(viewport={"width": 900, "height": 900}).new_page())

        # The owner signs up through the hosted page.
        owner.goto(f"{BASE}/auth/sign-up")
        owner.fill("#email", OWNER)
        owner.fill("#password", PASSWORD)
        owner.click("button[type=submit]")
        arrive(owner, "/auth/signed-in")

        owner.goto(f"{BASE}/auth/orgs")
        check("not in an organization yet" in text(owner), "a new user has no organization")
        shot(owner, "orgs-01-none")
        owner.fill("#name", "Browser Co")
        owner.click("text=Create organization")
        arrive(owner, "/auth/orgs/[0-9a-f-]{36}")
        org_url = owner.url
        org_id = org_url.rsplit("/", 1)[1]
        check("Browser Co" in text(owner) and "you are org:owner" in text(owner), f"the creator is its owner: {text(owner)}")
        check(OWNER in text(owner), "the member list shows the owner")

        # Two invitations by the form; the second is revoked by its button.
        owner.fill("#email", INVITEE)
        owner.click("text=Send invitation")
        arrive(owner, f"/auth/orgs/{org_id}")
        owner.fill("#email", "second@example.com")
        owner.select_option("#role", "org:admin")
        owner.click("text=Send invitation")
        arrive(owner, f"/auth/orgs/{org_id}")
        check(f"Revoke the invitation of {INVITEE} (org:member)" in text(owner), "the first invitation is listed")
        check("Revoke the invitation of second@example.com (org:admin)" in text(owner), "the second is listed with its role")
        shot(owner, "orgs-02-invited")
        owner.click("text=Revoke the invitation of second@example.com")
        arrive(owner, f"/auth/orgs/{org_id}")
        check("second@example.com" not in text(owner), "the revoked invitation is gone")

        # The invitee opens the mailed link in a browser without a session.
        token = handed_token()
        invitee = watch(browser.new_context(viewport={"width": 900, "height": 900}).new_page())
        invitee.goto(f"{BASE}/auth/invitation?token={token}")
        check(f"{INVITEE} is invited to join Browser Co as org:member" in text(invitee), f"the invitation page: {text(invitee)}")
        shot(invitee, "orgs-03-invitation")
        # The name may be left empty (the browser would refuse to submit a required field).
        check(invitee.locator("#name").get_attribute("required") is None, "the name is optional")
        invitee.fill("#password", "invitee strong passphrase")
        invitee.click("text=Create account and join")
        arrive(invitee, f"/auth/orgs/{org_id}")
        check("you are org:member" in text(invitee), f"joined as a member: {text(invitee)}")
        check(invitee.locator("text=Send invitation").count() == 0, "a member has no invitation form")
        shot(invitee, "orgs-04-member")

        # The link works once.
        again = watch(browser.new_context().new_page())
        goto_expecting(again, f"{BASE}/auth/invitation?token={token}", 404)
        check("Create account and join" not in text(again), "an accepted invitation cannot be used again")
        again.context.close()

        owner.reload()
        check(f"{INVITEE} · org:member" in text(owner), f"the owner sees the new member: {text(owner)}")

        # Switch: the organization becomes the session's active one.
        invitee.goto(f"{BASE}/auth/orgs")
        invitee.click("text=Switch to Browser Co")
        arrive(invitee, "/auth/orgs")
        check("Browser Co (org:member) · active" in text(invitee), f"the organization is active: {text(invitee)}")
        check(invitee.locator("text=Switch to Browser Co").count() == 0, "no switch button for the active one")
        shot(invitee, "orgs-05-active")
        # The app's own front end, on this origin, asks for a token with the session cookie.
        reply = invitee.context.request.post(f"{BASE}/v1/auth/token", headers={"origin": BASE}, data={})
        check(reply.status == 200, f"the session's token: {reply.status} {reply.text()}")
        jwt = reply.json()["access_token"]

        # The owner makes the invitee an admin by the role select; the invitee's page then offers the invitation form.
        form = owner.locator("form", has_text=f"Change the role of {INVITEE}")
        check(form.locator("select option").count() == 3, "the three built-in roles to choose from")
        form.locator("select").select_option("org:admin")
        form.locator("button").click()
        arrive(owner, f"/auth/orgs/{org_id}")
        check(f"{INVITEE} · org:admin" in text(owner), f"the new role is listed: {text(owner)}")
        invitee.goto(org_url)
        check("you are org:admin" in text(invitee), f"the invitee is an admin: {text(invitee)}")
        check(invitee.locator("text=Send invitation").count() == 1, "an admin may invite")
        shot(invitee, "orgs-06-admin")

        # Leaving takes the page away at once; the owner's list no longer shows the invitee.
        invitee.goto(org_url)
        invitee.click("text=Leave this organization")
        arrive(invitee, "/auth/orgs")
        check("not in an organization yet" in text(invitee), f"left: {text(invitee)}")
        goto_expecting(invitee, org_url, 404)  # the organization's page is gone for a former member
        owner.reload()
        check(INVITEE not in text(owner), "the owner no longer sees the invitee")
        shot(owner, "orgs-07-after-leave")

        # The owner renames the organization by the profile form.
        form = owner.locator("form", has_text="Save name and slug")
        form.locator("input[name=name]").fill("Browser Team")
        form.locator("button").click()
        arrive(owner, f"/auth/orgs/{org_id}")
        check("Browser Team (browser-co)" in text(owner), f"renamed: {text(owner)}")

        browser.close()
    print(json.dumps({"ok": True, "console_errors": errors, "screenshots": shots, "org_id": org_id, "jwt": jwt}), flush=True)


if __name__ == "__main__":
    main()
