"""The HTTP app: routes, request and response schemas, and errors as one JSON line.

    GET  /            the web page (static/index.html, app.js, style.css: no build step, no CDN)
    GET  /health      {"status": "ok"} once the models are loaded
    GET  /v1/models   each model's name, task and labels
    POST /v1/fill-mask {"model", "inputs": str | [str], "top_k"} → per input, per [MASK], ranked {token, score}
    POST /v1/predict  {"model", "inputs": input | [input]} → per input, the task's answer (Task.answers)
    POST /v1/embed    {"model", "inputs": str | [str], "normalize"} → per input, one vector
    GET  /docs        the OpenAPI page FastAPI generates from the schemas below

Every refused request gets a 4xx status and {"error": "one line"}: schema errors (FastAPI's 422) are answered
400 in that shape, an unknown model 404, too many or too long inputs 413, a full queue 503 with Retry-After.
A POST body is read as JSON whatever its Content-Type (`curl -d` labels it a form; JsonBody).
A handler validates and encodes the request on the event loop, then awaits its model's batcher
(masklm.serve.batcher), which runs the forward passes on one worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from masklm.errors import UserError
from masklm.serve.batcher import Batcher, QueueFull, Work
from masklm.serve.limits import ServeOptions
from masklm.serve.models import RequestError, ServedModel

STATIC = Path(__file__).parent / "static"
RETRY_AFTER_S = 1


# ----------------------------------------------------------------------------------------------------
# Schemas


def _texts(value: Any) -> Any:
    """inputs of fill-mask and embed: a string or a non-empty list of strings, none of them blank."""
    texts = value if isinstance(value, list) else [value]
    if not texts:
        raise ValueError("the list is empty; give at least one text")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError("expected a string or a list of strings")
        if not t.strip():
            raise ValueError(f"text {i} is empty; give some text")
    return value


def _is_text(value: str) -> bool:
    """False for a string holding a lone surrogate (JSON's "\\ud800" escape alone), which is not Unicode text."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def lone_surrogate(body: Any) -> str | None:
    """Where in a parsed JSON body a string or a field name holds a lone surrogate ("inputs[0].question"), the
    first in the body's order; None when every string is text. Iterative: deeply nested bodies are fine."""
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str) and not _is_text(value):
            return where
        if isinstance(value, dict):
            for key in value:
                if isinstance(key, str) and not _is_text(key):
                    return f"a field name in {where or 'the body'}"
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: StrictStr | None = Field(
        None, description="a served model's name; may be left out when one is served"
    )

    @model_validator(mode="before")
    @classmethod
    def _unicode(cls, body: Any) -> Any:
        """Every string of a request is checked here, once, before its fields are read: a lone surrogate would
        reach the tokenizer, which cannot encode it."""
        where = lone_surrogate(body)
        if where is not None:
            raise ValueError(
                f"{where}: not valid Unicode text (lone surrogate); a \\ud800-\\udfff escape must be one half "
                "of a pair, or send the text as UTF-8"
            )
        return body


DEFAULT_TOP_K = 5  # fill-mask candidates per [MASK] when a request does not say


class FillMaskRequest(_Request):
    inputs: str | list[str] = Field(description='text with one or more "[MASK]", or a list of such texts')
    top_k: StrictInt | None = Field(
        None, ge=1, description="candidates per [MASK] (default 5, or the server's --max-top-k when lower)"
    )
    _inputs = field_validator("inputs", mode="before")(_texts)


class EmbedRequest(_Request):
    inputs: str | list[str] = Field(description="a text or a list of texts")
    normalize: StrictBool = Field(False, description="scale each vector to unit length")
    _inputs = field_validator("inputs", mode="before")(_texts)


class PredictRequest(_Request):
    inputs: Any = Field(
        description='one input or a list of inputs; classification: "text" or {"text", "text_pair"}; token '
        'classification: "text"; QA: {"question", "context"}; multiple choice: {"context", "endings": [...]}'
    )


class Candidate(BaseModel):
    token: str
    score: float


class FillMaskResponse(BaseModel):
    model: str
    outputs: list[list[list[Candidate]]] = Field(description="per input, per [MASK], candidates best first")


class PredictResponse(BaseModel):
    model: str
    task: str
    outputs: list[dict[str, Any]] = Field(description="per input, the task's answer (docs/serving.md)")


class EmbedResponse(BaseModel):
    model: str
    outputs: list[list[float]] = Field(description="per input, the mean of the last hidden states")


class ModelInfo(BaseModel):
    name: str
    task: str
    labels: list[str] | None
    path: str


# ----------------------------------------------------------------------------------------------------
# Errors as {"error": "one line"}


def _one_line(text: str) -> str:
    """`text` on one line, any lone surrogate in it escaped (a JSON answer is UTF-8)."""
    return " ".join(str(text).split()).encode("utf-8", "backslashreplace").decode("utf-8")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """A refusal: `status` and {"error": message} on one line."""
    return JSONResponse({"error": _one_line(message)}, status_code=status, headers=headers)


def validation_message(exc: RequestValidationError) -> str:
    """FastAPI's list of schema errors as one line about the first."""
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    if first.get("type") == "missing" and not where:
        return "the body is missing; send a JSON object"
    return f"{where}: {message}" if where else message


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(400, validation_message(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such path {request.url.path}; the API is described at /docs"
        return error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(UserError)
    async def _user(request: Request, exc: UserError) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(RequestError)
    async def _refused(request: Request, exc: RequestError) -> JSONResponse:
        return error(exc.status, exc.message)

    @app.exception_handler(QueueFull)
    async def _full(request: Request, exc: QueueFull) -> JSONResponse:
        return error(503, "the server is busy; retry shortly", {"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return error(500, f"internal error ({type(exc).__name__}: {exc})")


# ----------------------------------------------------------------------------------------------------
# The app


class Models:
    """The served models by name, with one batcher each and the one thread their forward passes run on, made
    anew each time the app starts (`start`): a batcher's event belongs to the event loop it first ran on, and a
    second start of the same app (two `with TestClient(app)` in a row) waited for ever on the first one's."""

    def __init__(self, models: list[ServedModel], options: ServeOptions) -> None:
        self.by_name = {m.name: m for m in models}
        self.options = options
        self.batchers: dict[str, Batcher] = {}

    def start(self) -> list[asyncio.Task]:
        """The batchers of this start and their workers (on the running loop)."""
        options = self.options
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="masklm-forward")
        self.batchers = {
            name: Batcher(m.forward, self.executor, options.max_batch, options.max_wait_ms, options.max_queue)
            for name, m in self.by_name.items()
        }
        return [asyncio.create_task(b.run()) for b in self.batchers.values()]

    def pick(self, name: str | None) -> ServedModel:
        """The model a request names: 404 for an unknown one, 400 for none when several are served."""
        if name is None:
            if len(self.by_name) == 1:
                return next(iter(self.by_name.values()))
            names = ", ".join(self.by_name)
            raise RequestError(400, f'several models are served ({names}); name one in "model"')
        if name not in self.by_name:
            raise RequestError(404, f"unknown model {name!r}; served: {', '.join(self.by_name)}")
        return self.by_name[name]

    async def answer(self, served: ServedModel, work: Work) -> Any:
        """The answer to one request, computed in a batch of its model."""
        return await self.batchers[served.name].submit(work)


def as_list(inputs: Any) -> list[Any]:
    """A request's inputs as a list (one input alone is a list of one); 400 for an empty list."""
    items = inputs if isinstance(inputs, list) else [inputs]
    if not items:
        raise RequestError(400, "inputs: the list is empty; give at least one input")
    return items


def create_app(models: list[ServedModel], options: ServeOptions | None = None) -> FastAPI:
    """The FastAPI app answering with `models` (already loaded)."""
    served = Models(models, options or ServeOptions())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        workers = served.start()
        yield
        for w in workers:  # uvicorn has drained the requests in flight before the lifespan ends
            w.cancel()
        served.executor.shutdown(wait=True)

    app = FastAPI(title="masklm", summary="masked language models over HTTP", lifespan=lifespan)
    _install_error_handlers(app)
    app.add_middleware(JsonBody)
    app.add_middleware(BodyLimit, limit=served.options.max_body_bytes)
    _add_routes(app, served)
    return app


class JsonBody:
    """ASGI middleware: every POST body is read as JSON, whatever its Content-Type. `curl -d` sends
    application/x-www-form-urlencoded, other clients text/plain or none, and FastAPI reads only a body labelled
    JSON as JSON; a body that is not JSON still gets the 400 saying so."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: 413 for a request body over `limit` bytes. A Content-Length above it is refused before
    the body is read; a body without one (Transfer-Encoding: chunked) is read here, its bytes counted, and refused
    as soon as they pass the limit, without reading the rest. A body within it goes on to the app in one piece."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
        if size.isdigit() and int(size) > self.limit:
            await error(413, f"the body is {size} bytes, above the server's limit of {self.limit}")(
                scope, receive, send
            )
            return
        chunks: list[bytes] = []
        read = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            read += len(chunks[-1])
            if read > self.limit:
                await error(413, f"the body is over the server's limit of {self.limit} bytes")(
                    scope, receive, send
                )
                return
            if not message.get("more_body", False):
                break
        body: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> Message:
            nonlocal body
            if body is None:
                return await receive()
            message, body = body, None
            return message

        await self.app(scope, replay, send)


def _add_routes(app: FastAPI, models: Models) -> None:
    limits = models.options

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models", response_model=list[ModelInfo])
    async def list_models() -> list[dict[str, Any]]:
        return [m.info() for m in models.by_name.values()]

    @app.post("/v1/fill-mask", response_model=FillMaskResponse)
    async def fill_mask(req: FillMaskRequest) -> dict[str, Any]:
        served = models.pick(req.model)
        # a request that asks for no top_k is answered within any --max-top-k
        top_k = req.top_k if req.top_k is not None else min(DEFAULT_TOP_K, limits.max_top_k)
        if top_k > limits.max_top_k:
            raise RequestError(
                400, f"top_k: {top_k} is above the server's limit of {limits.max_top_k} (--max-top-k)"
            )
        work = served.fill_mask_work(as_list(req.inputs), top_k, limits)
        return {"model": served.name, "outputs": await models.answer(served, work)}

    @app.post("/v1/predict", response_model=PredictResponse)
    async def predict(req: PredictRequest) -> dict[str, Any]:
        served = models.pick(req.model)
        work = served.predict_work(as_list(req.inputs), limits)
        outputs = await models.answer(served, work)
        return {"model": served.name, "task": served.kind, "outputs": outputs}

    @app.post("/v1/embed", response_model=EmbedResponse)
    async def embed(req: EmbedRequest) -> dict[str, Any]:
        served = models.pick(req.model)
        work = served.embed_work(as_list(req.inputs), req.normalize, limits)
        return {"model": served.name, "outputs": await models.answer(served, work)}
