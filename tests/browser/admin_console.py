"""The admin console in real Chromium (Debian's, driven by Playwright for Python).

Run by tests/api/admin_browser.rs against a live test server, with:
  BASE     the server's base URL
  LINK     a one-time admin sign-in link
  USER_ID  an ordinary user's id (edited, impersonated)
  ORG_ID   an organization the user owns (its console page)
  SHOTS    the directory for one screenshot per page

Checks: a non-admin gets 404; sign-in by link; every page renders without
console errors; a table edit round-trips (the Rust side reads the database);
the SQL runner refuses a write in read-only mode; a form posted without its
CSRF token is refused; impersonation shows in the audit log. Prints one JSON
line with what it saw; exits non-zero on the first failed check.
"""

import json
import os

from playwright.sync_api import sync_playwright

from common import check, errors, launch, shot, shots

BASE = os.environ["BASE"]
LINK = os.environ["LINK"]
USER_ID = os.environ["USER_ID"]
ORG_ID = os.environ["ORG_ID"]


def main():
    with sync_playwright() as p:
        browser = launch(p)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        # Console errors, with the resource they are about (the refused SQL write
        # and form post below are expected: left out by URL, not by timing).
        expected = {BASE + f"/admin/users/{USER_ID}/revoke-sessions", BASE + "/admin/sql"}

        def on_console(m):
            if m.type == "error" and m.location.get("url") not in expected:
                errors.append(f"{page.url}: {m.text} ({m.location.get('url')})")

        page.on("console", on_console)
        page.on("pageerror", lambda e: errors.append(f"{page.url}: {e}"))
        page.on("dialog", lambda d: d.accept())

        # A visitor without an admin session: 404 everywhere but the sign-in page.
        stranger = browser.new_context().new_page()
        r = stranger.goto(BASE + "/admin")
        check(r.status == 404, f"/admin without a session answered {r.status}")

        # Sign in with the one-time link (a button, not an automatic sign-in).
        page.goto(LINK)
        shot(page, "sign-in-link")
        page.get_by_role("button", name="Continue").click()
        page.wait_for_url(BASE + "/admin")
        check("Overview" in page.title(), f"after sign-in: {page.title()}")
        shot(page, "overview")

        pages = [
            ("users", "/admin/users"),
            ("user", f"/admin/users/{USER_ID}"),
            ("orgs", "/admin/orgs"),
            ("org", f"/admin/orgs/{ORG_ID}"),
            ("storage", "/admin/storage"),
            ("connections", "/admin/connections"),
            ("conversations", "/admin/conversations"),
            ("knowledge", f"/admin/knowledge?user={USER_ID}"),
            ("memory", "/admin/memory"),
            ("tables", "/admin/tables"),
            ("table-users", "/admin/tables/users?sort=email"),
            ("table-new", "/admin/tables/storage_buckets/new"),
            ("sql", "/admin/sql"),
            ("audit", "/admin/audit"),
        ]
        for name, path in pages:
            r = page.goto(BASE + path)
            check(r.status == 200, f"{path} answered {r.status}")
            check(page.locator("h1").count() == 1, f"{path} has no heading")
            shot(page, name)
        check(not errors, f"console errors: {errors}")

        # A table edit: open the user's row, change the name, save.
        page.goto(BASE + f"/admin/tables/users?fc=id&fo=eq&fv={USER_ID}")
        page.get_by_role("link", name="open").first.click()
        page.fill('input[name="v.name"]', "Edited In Chromium")
        page.get_by_role("button", name="Save changes").click()
        notice = page.locator(".notice").all_inner_texts()
        check("Row updated." in page.content(), f"the row edit did not report success: {notice}")
        check(page.input_value('input[name="v.name"]') == "Edited In Chromium", "the edited value is not shown")
        shot(page, "row-edited")

        # The SQL runner refuses a write in read-only mode.
        page.goto(BASE + "/admin/sql")
        page.fill('textarea[name="sql"]', "DELETE FROM users")
        page.select_option('select[name="mode"]', "read")
        with page.expect_response(lambda r: r.url.endswith("/admin/sql") and r.request.method == "POST") as resp:
            page.get_by_role("button", name="Run").click()
        check(resp.value.status == 422, f"a read-only DELETE answered {resp.value.status}")
        check("read-only transaction" in page.content(), "the refusal does not say why")
        shot(page, "sql-refused")

        # A form posted without its CSRF token is refused (the token is removed
        # from the real form in the page, then the button is clicked).
        page.goto(BASE + f"/admin/users/{USER_ID}")
        page.evaluate(
            """() => {
                const f = [...document.querySelectorAll('form')].find(f => f.action.endsWith('/revoke-sessions'));
                f.querySelector('input[name=csrf]').remove();
            }"""
        )
        with page.expect_response(lambda r: r.url.endswith("/revoke-sessions")) as resp:
            page.get_by_role("button", name="Revoke sessions").click()
        check(resp.value.status == 403, f"a form without its token answered {resp.value.status}")
        shot(page, "csrf-refused")

        # Impersonation, then the audit log shows it.
        page.goto(BASE + f"/admin/users/{USER_ID}")
        page.get_by_role("button", name="Impersonate").click()
        check("Impersonation session" in page.content(), "no impersonation page")
        shot(page, "impersonation")
        page.goto(BASE + "/admin/audit?action=admin.user.impersonate")
        check("admin.user.impersonate" in page.content(), "the audit log does not show the impersonation")
        shot(page, "audit-impersonation")

        # A fresh browser (no admin cookie) is refused again.
        other = browser.new_context()
        r = other.new_page().goto(BASE + "/admin/users")
        check(r.status == 404, f"a second browser got {r.status}")
        check(not errors, f"console errors: {errors}")
        browser.close()
    print(json.dumps({"ok": True, "screenshots": shots, "console_errors": errors}), flush=True)


if __name__ == "__main__":
    main()
