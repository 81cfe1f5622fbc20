"""API keys of the mutating endpoints: X-API-Key, compared in constant time; 401 without, 403 with a wrong one."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

logger = logging.getLogger(__name__)

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="One of RACEQUANT_API_KEYS.")


def key_matches(given: str, keys: list[str]) -> bool:
    """True when ``given`` equals one of ``keys``; every key is compared, each in constant time."""
    given_bytes = given.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given_bytes, key.encode())
    return found


def require_api_key(request: Request, api_key: Annotated[str | None, Security(api_key_header)] = None) -> str:
    if not api_key:
        raise HTTPException(
            status_code=401, detail="X-API-Key: this endpoint needs an API key.", headers={"WWW-Authenticate": "APIKey"}
        )
    keys: list[str] = request.app.state.service.settings.api_keys
    if not key_matches(api_key, keys):
        logger.info("refused a wrong API key on %s", request.url.path)
        raise HTTPException(status_code=403, detail="X-API-Key: the API key is not valid.")
    return api_key


ApiKey = Annotated[str, Depends(require_api_key)]
