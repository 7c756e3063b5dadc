"""A vLLM server qtui did not start: another user's, a container's, one behind a tunnel.

qtui cannot see its process or its log, so its phase comes from /health alone:
answering is ready; refusing connections is down; once answered and now silent
(or failing) is "not responding". What it serves comes from /v1/models. The
API key, when the server wants one, is read from the environment variable the
user names, never stored.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from backend.server_state import Phase, ServerStatus

if TYPE_CHECKING:
    import httpx

NOT_OURS = "not started by qtui"


@dataclass(frozen=True)
class Endpoint:
    """Where a watched server answers; `name` is what the status bar and `w` show."""

    name: str
    url: str
    api_key_env: str | None = None

    def headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return {"Authorization": f"Bearer {key}"} if key else {}


def endpoint_from_url(url: str, api_key_env: str | None = None) -> Endpoint:
    """`qtui --url URL`: the URL as given (a trailing /v1 or slash dropped), named by its host."""
    cleaned = url.strip().rstrip("/")
    if cleaned.endswith("/v1"):
        cleaned = cleaned[: -len("/v1")]
    if "://" not in cleaned:
        cleaned = f"http://{cleaned}"
    return Endpoint(name=cleaned.split("://", 1)[1], url=cleaned, api_key_env=api_key_env)


class EndpointWatcher:
    """Polls one endpoint; `status()` never raises and returns within the client timeout."""

    def __init__(self, endpoint: Endpoint, client: httpx.Client | None = None) -> None:
        import httpx

        self.endpoint = endpoint
        self._client = client or httpx.Client(
            timeout=httpx.Timeout(2.0, connect=1.0), headers=endpoint.headers()
        )
        self.answered_once = False
        self.unresponsive_since: float | None = None
        self.served: str = ""
        """What /v1/models says: `name (max_model_len N)`, read once it answers."""

    def status(self) -> ServerStatus:
        import httpx

        url = self.endpoint.url
        try:
            response = self._client.get(f"{url}/health")
        except httpx.ConnectError:
            self.unresponsive_since = None
            return ServerStatus(
                Phase.STOPPED, None, f"nothing answers at {url} (connection refused)"
            )
        except httpx.HTTPError as error:
            return self._silent(f"/health failed: {type(error).__name__}")
        if response.status_code != 200:
            return self._silent(f"/health answered {response.status_code}")
        self.answered_once = True
        self.unresponsive_since = None
        if not self.served:
            self.served = self._models()
        return ServerStatus(Phase.READY, None)

    def _silent(self, why: str) -> ServerStatus:
        if not self.answered_once:
            return ServerStatus(Phase.STOPPED, None, f"{self.endpoint.url}: {why}")
        if self.unresponsive_since is None:
            self.unresponsive_since = time.time()
        since = datetime.fromtimestamp(self.unresponsive_since)
        return ServerStatus(
            Phase.NOT_RESPONDING,
            None,
            f"{why}; it has not answered since {since:%H:%M:%S}: the server is hung or "
            "frozen, and it is not ours to stop",
        )

    def _models(self) -> str:
        import httpx

        try:
            data: Any = self._client.get(f"{self.endpoint.url}/v1/models").json()
            models = data["data"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return ""
        parts = []
        for model in models:
            if not isinstance(model, dict):
                continue
            length = model.get("max_model_len")
            parts.append(f"{model.get('id')}" + (f" (max_model_len {length})" if length else ""))
        return ", ".join(parts)

    def close(self) -> None:
        self._client.close()
