#!/usr/bin/env python3
"""Upload a file through otadepot's `uploadContent` with the stock Python
`gql` client (pip install 'gql[requests]'), as an operator's script does:
the GraphQL multipart request, built by gql itself (`upload_files=True`).

usage: upload_content_gql.py GRAPHQL_URL TOKEN FILE

Prints the mutation's result as JSON; on GraphQL errors prints them and
exits 1. Run by tests/it/upload_content.rs.
"""

import hashlib
import json
import os
import sys

from gql import Client, FileVar, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.requests import RequestsHTTPTransport

UPLOAD = """
mutation Upload($input: UploadContentInput!, $file: Upload!) {
  uploadContent(input: $input, file: $file) {
    content { id state length sha256 name type contentType tags { name value } }
  }
}
"""


def main() -> int:
    url, token, path = sys.argv[1:4]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    transport = RequestsHTTPTransport(url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
    client = Client(transport=transport)
    with open(path, "rb") as f:
        request = GraphQLRequest(
            UPLOAD,
            variable_values={
                "input": {
                    "name": os.path.basename(path),
                    "type": "firmware",
                    "contentType": "application/octet-stream",
                    "length": os.path.getsize(path),
                    "sha256": digest.hexdigest(),
                    "tags": [{"name": "uploaded-by", "value": "gql"}],
                },
                "file": FileVar(f, filename=os.path.basename(path), content_type="application/octet-stream"),
            },
        )
        try:
            result = client.execute(request, upload_files=True)
        except TransportQueryError as err:
            print(json.dumps({"errors": err.errors}))
            return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
