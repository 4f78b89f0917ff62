"""How the OpenAPI spec describes the API's bearer credentials: an API token, or an access
token from Sluice's client-credentials flow (OpenAPI 3.0 ``oauth2`` security scheme)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension

from tenants.oauth import scopes as oauth_scopes


class BearerCredentialsScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.authentication.ApiTokenAuthentication"
    name = ["apiToken", "oauth2ClientCredentials"]

    def get_security_requirement(self, auto_schema: Any) -> list[dict[str, list[Any]]]:
        # Either credential, not both (a list of requirements is an OR).
        return [{"apiToken": []}, {"oauth2ClientCredentials": []}]

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, Any]]:
        token_url = f"{settings.SLUICE_RUNTIME.web_url}/oauth/token"
        return [
            {"type": "http", "scheme": "bearer", "description": "An API token (slc_...), acting as its user."},
            {
                "type": "oauth2",
                "description": "A service client's access token: provision:read acts as a viewer of the "
                "client's tenant, provision:write as its admin.",
                "flows": {
                    "clientCredentials": {
                        "tokenUrl": token_url,
                        "scopes": {
                            oauth_scopes.PROVISION_READ: "read the client's own tenant",
                            oauth_scopes.PROVISION_WRITE: "change the client's own tenant",
                        },
                    }
                },
            },
        ]
