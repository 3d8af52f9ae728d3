"""Drives the operator console in a real headless Chromium (Debian's, through
Playwright) against a daemon serving the demo data, and saves a screenshot
of every view.

    console_test.py --url http://127.0.0.1:PORT --out DIR [--chromium PATH] [--docs-shot PNG]

Run by tests/console_browser.rs, which starts pouchdb-server and the daemon
with fixtures/couch/ (plus one unit whose name is markup, to check that the
page escapes it). Prints one JSON line, {"ok": ..., "checks": [...],
"failure": ...}, and exits 1 when a check fails.
"""

import argparse
import json
import os
import sys
import time

from playwright.sync_api import sync_playwright, expect

TIMEOUT_MS = 10_000
# The route tester's invalid number is answered 400 on purpose; Chromium
# logs every failed fetch.
EXPECTED_ERROR = "status of 400 (Bad Request)"
checks = []


def check(name, condition, detail=""):
    checks.append(name)
    if not condition:
        raise AssertionError(f"{name}: {detail}")


def shot(page, out, name):
    page.screenshot(path=os.path.join(out, f"{name}.png"), full_page=True)


def overview(page, base, out):
    page.goto(f"{base}/console/#/overview")
    feeds = page.locator("#feeds-table")
    expect(feeds).to_contain_text("units", timeout=TIMEOUT_MS)
    expect(feeds).to_contain_text("caught up")
    expect(page.locator("#cache-table")).to_contain_text("phones")
    expect(page.locator("#cards")).to_contain_text("ready")
    # The live charts refresh without a reload: a line needs two samples.
    page.wait_for_function(
        "() => Number(document.querySelector('#chart-rps path.series')?.dataset.points || 0) >= 2",
        timeout=TIMEOUT_MS,
    )
    check("overview: feeds, cache, live chart", True)
    shot(page, out, "overview")


def errors(page, base, out):
    page.goto(f"{base}/console/#/errors")
    expect(page.locator("#error-groups")).to_contain_text("phones", timeout=TIMEOUT_MS)
    expect(page.locator("#view-errors")).to_contain_text("locked by account")
    # A unit's error links to its unit view.
    page.locator("#view-errors a", has_text="unit-acme-yealink").first.click()
    expect(page.locator("#why-table")).to_be_visible(timeout=TIMEOUT_MS)
    check("errors: grouped, reasons, link to the document", True)
    page.goto(f"{base}/console/#/errors")
    expect(page.locator("#error-groups")).to_be_visible(timeout=TIMEOUT_MS)
    shot(page, out, "errors")


def phones(page, base, out, docs_shot):
    page.goto(f"{base}/console/#/phones")
    page.fill("#unit-q", "80:5E:C0:12")
    page.press("#unit-q", "Enter")
    table = page.locator("#units-table")
    expect(table).to_contain_text("unit-acme-yealink", timeout=TIMEOUT_MS)
    check("phones: search by MAC", table.locator("tbody tr").count() == 1, table.inner_text())
    # Markup in a unit's name is shown as text, never run.
    page.fill("#unit-q", "markup")
    page.press("#unit-q", "Enter")
    expect(page.locator("#units-table")).to_contain_text("<img", timeout=TIMEOUT_MS)
    check("phones: names are escaped", page.evaluate("() => window.__xss === undefined")
          and page.locator("#units-table img").count() == 0)
    page.fill("#unit-q", "acme")
    page.press("#unit-q", "Enter")
    expect(page.locator("#units-table")).to_contain_text("unit-acme-polycom", timeout=TIMEOUT_MS)
    page.locator("#units-table a", has_text="unit-acme-yealink").click()
    why = page.locator("#why-table")
    expect(why).to_contain_text("/codecs", timeout=TIMEOUT_MS)
    page.locator('button.why-button[data-path="/codecs"]').click()
    box = page.locator("#why-table .why")
    expect(box).to_contain_text("Decided by the lock of account")
    expect(box).to_contain_text("Refused: account_config")
    check("phones: why this value names the layer and the lock", True)
    if docs_shot:
        # The README's picture: a unit's "why this value" with a lock.
        page.set_viewport_size({"width": 1100, "height": 640})
        page.locator('tr[data-path="/codecs"]').scroll_into_view_if_needed()
        page.evaluate("() => window.scrollBy(0, 60)")
        page.screenshot(path=docs_shot)
        page.set_viewport_size({"width": 1280, "height": 900})
    page.locator('button.file-button[data-file="805ec0123456.cfg"]').click()
    body = page.locator("#file-body")
    expect(body).to_contain_text("account.1.password = ••••••", timeout=TIMEOUT_MS)
    check("phones: files masked", "demo-sip-secret" not in body.inner_text())
    shot(page, out, "unit")
    page.check("#reveal")
    page.locator('button.file-button[data-file="805ec0123456.cfg"]').click()
    expect(body).to_contain_text("demo-sip-secret-1", timeout=TIMEOUT_MS)
    check("phones: an admin may reveal secrets", True)
    expect(page.locator("#requests-table")).to_contain_text("805ec0123456.cfg")
    check("phones: request log", True)


def routing(page, base, out):
    page.goto(f"{base}/console/#/routing")
    page.fill("#route-domain", "example.net")
    page.fill("#route-ruleset", "default")
    page.fill("#route-number", "33123456789")
    page.fill("#route-host", "sbc1.example.net")
    page.click("#route-submit")
    gateways = page.locator("#route-gateways")
    expect(gateways).to_contain_text("transit-a", timeout=TIMEOUT_MS)
    expect(gateways).to_contain_text("sbc1-egress")
    expect(page.locator("#route-result")).to_contain_text("rule:33")
    # Where each attribute came from: the gateway's definition, the route.
    expect(gateways).to_contain_text("cdr_carrier = transit-a ← gateway gateway:example.net:transit-a-1")
    expect(gateways).to_contain_text("progress_timeout = 8 ← route: rule:33")
    check("routing: the tester resolves the gateways and where each attribute came from", True)
    shot(page, out, "routing")
    page.fill("#route-number", "33 12")
    page.click("#route-submit")
    expect(page.locator("#route-failure")).to_contain_text("400", timeout=TIMEOUT_MS)
    check("routing: a bad number is reported", True)


def acls(page, base, out):
    page.goto(f"{base}/console/#/acls")
    lists = page.locator("#acl-lists")
    expect(lists).to_contain_text("trusted", timeout=TIMEOUT_MS)
    expect(page.locator("#acl-dns")).to_contain_text("carrier-a.example.com", timeout=TIMEOUT_MS)
    expect(page.locator("#acl-dns")).to_contain_text("TTL")
    check("acls: lists, entries and DNS names", True)
    shot(page, out, "acls")


def edge(page, base, out):
    page.goto(f"{base}/console/#/edge")
    expect(page.locator("#edge-table")).to_contain_text("c3d4e5", timeout=TIMEOUT_MS)
    expect(page.locator("#edge-table")).to_contain_text("0.16")
    expect(page.locator("#template-table")).to_contain_text("wg0.conf")
    expect(page.locator("#template-table")).to_be_visible()
    expect(page.locator("#chart-reports")).to_be_visible()
    check("edge: edges, templates, report chart", True)
    shot(page, out, "edge")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--docs-shot")
    args = parser.parse_args()
    base = args.url.rstrip("/")
    problems = []
    started = time.monotonic()
    result = {"ok": False, "checks": checks}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        # Any script error or CSP violation fails the run.
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                if m.type == "error" and EXPECTED_ERROR not in m.text else None)
        try:
            for view in (overview, errors, phones, routing, acls, edge):
                if view is phones:
                    view(page, base, args.out, args.docs_shot)
                else:
                    view(page, base, args.out)
            check("no script error or CSP violation", not problems, "; ".join(problems))
            result["ok"] = True
        except Exception as failure:  # reported as data: the Rust test shows it
            result["failure"] = f"{type(failure).__name__}: {failure}"
            try:
                shot(page, args.out, "failure")
            except Exception:
                pass
        finally:
            result["problems"] = problems
            result["seconds"] = round(time.monotonic() - started, 1)
            browser.close()
    print(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
