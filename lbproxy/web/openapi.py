"""
The OpenAPI 3 description of the admin API (C{GET /api/v1/openapi.json}).
"""


def openapi_document() -> dict:
    return {"openapi": "3.0.3", "info": {"title": "lbproxy admin API", "version": "1"}, "paths": {}}
