"""Run the public scim2-tester suite against one SCIM base URL.

Prints one JSON object per check on standard output:
{"title", "status", "resource_type", "reason", "tags"}. The Rust test
(tests/it/scim/conformance.rs) decides what passes, so this script only
reports; it exits non-zero only when the suite itself could not run.
"""

import json
import sys

from httpx2 import Client
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import check_server


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: scim2_tester_run.py BASE_URL TOKEN", file=sys.stderr)
        return 2
    base_url, token = sys.argv[1], sys.argv[2]
    http = Client(
        base_url=base_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30.0,
    )
    client = SyncSCIMClient(http)
    for result in check_server(client):
        print(
            json.dumps(
                {
                    "title": result.title,
                    "status": result.status.name,
                    "resource_type": result.resource_type,
                    "reason": result.reason,
                    "tags": sorted(result.tags),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
