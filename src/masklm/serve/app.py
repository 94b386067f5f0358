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
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator
from starlette.exceptions import HTTPException

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


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: StrictStr | None = Field(
        None, description="a served model's name; may be left out when one is served"
    )


class FillMaskRequest(_Request):
    inputs: str | list[str] = Field(description='text with one or more "[MASK]", or a list of such texts')
    top_k: StrictInt = Field(5, ge=1, description="candidates per [MASK]")
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
    return " ".join(str(text).split())


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
    """The served models by name, with one batcher each and the one thread their forward passes run on."""

    def __init__(self, models: list[ServedModel], options: ServeOptions) -> None:
        self.by_name = {m.name: m for m in models}
        self.options = options
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="masklm-forward")
        self.batchers = {
            m.name: Batcher(
                m.forward, self.executor, options.max_batch, options.max_wait_ms, options.max_queue
            )
            for m in models
        }

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
        workers = [asyncio.create_task(b.run()) for b in served.batchers.values()]
        yield
        for w in workers:  # uvicorn has drained the requests in flight before the lifespan ends
            w.cancel()
        served.executor.shutdown(wait=True)

    app = FastAPI(title="masklm", summary="masked language models over HTTP", lifespan=lifespan)
    _install_error_handlers(app)
    limit = served.options.max_body_bytes

    @app.middleware("http")
    async def _limit_body(request: Request, call_next: Any) -> Any:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limit:
            return error(413, f"the body is {size} bytes, above the server's limit of {limit}")
        return await call_next(request)

    _add_routes(app, served)
    return app


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
        if req.top_k > limits.max_top_k:
            raise RequestError(400, f"top_k: {req.top_k} is above the server's limit of {limits.max_top_k}")
        work = served.fill_mask_work(as_list(req.inputs), req.top_k, limits)
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
