"""The stylization API: list models, stylize one image, compare several models on one image.

A multi-style model (conditional instance norm, Dumoulin et al. 2017; issue 17) takes a ``style`` name or
a ``mix`` of its styles, as the CLI's ``--style``/``--mix``; the worker resolves them
(:meth:`~server.inference.InferenceWorker.style_weights`, which also says how a comparison applies them).
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import AfterValidator, BaseModel, Field

from style_transfer.checkpoint import ModelInfo
from style_transfer.imageio import (INPUT_FORMAT_NAMES, INPUT_FORMATS, VIDEO_SUFFIXES, EncodedJpeg, LoadedImage,
                                    UnsupportedImageFormat, decode_image, encode_image, format_name, format_names,
                                    media_types)
from style_transfer.sidebyside import comparison_grid, photo_metrics, stylize_each_async
from style_transfer.stylize import StylizeOptions, check_paint_size, fit_image, style_names

from ..deps import SettingsDep, WorkerDep
from ..errors import EmptyUpload, InvalidField
from ..inference import InferenceWorker, UndecodableOnDevice
from ..settings import Settings
from ..videos import VIDEO_MEDIA_TYPES

router = APIRouter(prefix="/v1", tags=["stylize"])

ACCEPTED_FORMATS = INPUT_FORMATS
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}

ERROR_RESPONSES = {
    400: {"description": "bad request (empty upload, invalid model name)"},
    404: {"description": "unknown model"},
    413: {"description": "upload or pixel count over the limit, or an image too large for the device's memory "
                         "(code too_large_for_device: send a smaller max_size)"},
    415: {"description": f"not an image of these formats: {INPUT_FORMAT_NAMES}"},
    422: {"description": "invalid field (code invalid_request), style or mix (invalid_style), or a corrupt image"},
    503: {"description": "not ready, or at capacity (see Retry-After)"},
    504: {"description": "waited in the queue past the deadline"},
}


class ModelSummary(BaseModel):
    name: str
    style: str
    norm: str
    steps: int
    parameters: int
    bytes: int
    style_sha256: str = ""
    config: dict
    training: dict
    losses: dict
    styles: list[str] = Field(description="the styles the model can be asked for with `style` or `mix`, in the "
                                          "order of its (gamma, beta) pairs: several for a multi-style "
                                          "(conditional_instance) model, else its one style")
    ab_group: str = Field(description="the norm A/B set the model belongs to: equal for models trained on the "
                                      "same style image with every recorded setting equal but the norm "
                                      "(style_transfer.spec.ab_group)")
    for_video: bool = Field(False, description="trained for video (train --stability-weight): its strokes follow a "
                                               "moving camera instead of being painted anew in every frame")


class VideoSupport(BaseModel):
    enabled: bool = Field(description="whether POST /v1/videos takes clips")
    reason: str | None = Field(description="why not, when it does not")
    max_bytes: int = Field(description="the largest upload (bytes)")
    max_frames: int = Field(description="the most frames a clip may have")
    media_types: list[str] = Field(description="media types of the videos taken (a file picker's `accept`)")
    suffixes: list[str] = Field(description="file suffixes of the videos taken")


class ModelList(BaseModel):
    device: str
    ready: bool
    models: list[ModelSummary]
    errors: dict[str, str] = Field(default_factory=dict, description="checkpoints that could not be loaded")
    paint_size: int = Field(description="the long side (px) the server paints at when a request gives no "
                                        "`paint_size` (0: the output's size)")
    input_formats: list[str] = Field(description="the image formats uploads may be in (Pillow's names; AVIF only "
                                                 "where the server's Pillow reads it)")
    input_format_names: list[str] = Field(description="the same formats as people know them (WebP, HEIC), in order")
    input_media_types: list[str] = Field(description="the media types of such files (a file picker's `accept`)")
    video: VideoSupport


class CompareResult(BaseModel):
    model: str
    norm: str
    style: str = Field(description="the model's style; for a multi-style model the style it ran: a name, or a "
                                   "mix as NAME=WEIGHT,...")
    elapsed_ms: float
    ssim: float = Field(description="luminance SSIM of the output to the uploaded photo: how much of its "
                                    "structure the model kept (1 = all)")
    dark_spots: float = Field(description="percent of pixels painted near-black where the photo is lit: "
                                          "droplets and holes (lower is better)")
    image: str = Field(description="data: URL of the stylized image")


class CompareResponse(BaseModel):
    width: int
    height: int
    original: str = Field(description="data: URL of the (size-bounded) original")
    results: list[CompareResult]


Strength = Annotated[float, Form(ge=0.0, le=1.0, description="0 = the photo unchanged, 1 = fully stylized")]
PreserveColor = Annotated[bool, Form(description="keep the photo's colours (luminance-only transfer)")]
MaxSize = Annotated[int | None, Form(ge=8, description="bound the long side (px); the server caps it too")]
PaintSize = Annotated[int | None, Form(ge=0, description="paint at most this long side (px), then bring the painting "
                                                        "back to the output's size with the photo's fine detail: "
                                                        "smaller = larger strokes; 0 = paint at the output's size; "
                                                        "default: the server's (GET /v1/models, `paint_size`)"),
                      AfterValidator(lambda v: v if v is None else check_paint_size(v))]
Format = Annotated[Literal["png", "jpeg"], Form(description="output format")]
Upload = Annotated[UploadFile, File(description=f"an image: {INPUT_FORMAT_NAMES}")]
Style = Annotated[str | None, Form(description="a multi-style model's style, by name (its `styles` in GET "
                                               "/v1/models); default: its first style. Not with `mix`")]
Mix = Annotated[str | None, Form(description="a blend of a multi-style model's styles, `NAME=WEIGHT,...`, e.g. "
                                             "`starry=0.6,wave=0.4`: weights >= 0 that sum to 1 (a weight of 1 is "
                                             "exactly that style). Not with `style`")]


@router.get("/models", response_model=ModelList, summary="The loaded models and their metadata")
async def models(request: Request, worker: WorkerDep) -> ModelList:
    settings, videos = worker.settings, request.app.state.videos
    return ModelList(device=worker.device.type, ready=worker.ready.is_set(),
                     models=[ModelSummary(**s) for s in worker.summaries.values()], errors=worker.load_errors,
                     paint_size=settings.paint_size, input_formats=list(ACCEPTED_FORMATS),
                     input_format_names=[format_name(f) for f in ACCEPTED_FORMATS],
                     input_media_types=media_types(ACCEPTED_FORMATS),
                     video=VideoSupport(enabled=videos.enabled, reason=videos.reason,
                                        max_bytes=settings.max_video_bytes, max_frames=settings.max_video_frames,
                                        media_types=VIDEO_MEDIA_TYPES, suffixes=sorted(VIDEO_SUFFIXES)))


async def _read_upload(upload: UploadFile) -> bytes:
    data = await upload.read()
    if not data:
        raise EmptyUpload("the uploaded file is empty")
    return data


def _unsupported(refused: UnsupportedImageFormat) -> UnsupportedImageFormat:
    return UnsupportedImageFormat(f"only these image formats are accepted: {format_names(ACCEPTED_FORMATS)} "
                                  "(recognised by content, not by name)", refused.hint)


async def _decode(data: bytes, settings: Settings, options: StylizeOptions,
                  stage: Callable[[LoadedImage], LoadedImage] | None = None) -> LoadedImage:
    """The upload decoded by Pillow and bounded to ``options.max_size`` (what every model of the request is
    given), then ``stage``-d (the worker's: pinned memory on a GPU)."""
    try:
        image = await run_in_threadpool(decode_image, data, ACCEPTED_FORMATS, settings.max_pixels)
    except UnsupportedImageFormat as refused:
        raise _unsupported(refused) from None
    return await run_in_threadpool(_fit_and_stage, image, options.max_size, stage)


def _fit_and_stage(image: LoadedImage, max_size: int | None,
                   stage: Callable[[LoadedImage], LoadedImage] | None) -> LoadedImage:
    image = fit_image(image, max_size)
    return stage(image) if stage is not None else image


async def _read_photo(upload: UploadFile, settings: Settings, options: StylizeOptions) -> LoadedImage:
    """The upload decoded and bounded to ``options.max_size``: what every model of the request is given."""
    return await _decode(await _read_upload(upload), settings, options)


async def _photo_for(worker: InferenceWorker, data: bytes, settings: Settings,
                     options: StylizeOptions) -> LoadedImage | EncodedJpeg:
    """The upload as the worker takes it: a JPEG its device decodes, left undecoded (its header checked here,
    by Pillow, with Pillow's refusals), or decoded by Pillow, bounded and staged for the device."""
    if worker.codec == "torchvision":
        try:
            jpeg = await run_in_threadpool(worker.device_jpeg, data, ACCEPTED_FORMATS, settings.max_pixels)
        except UnsupportedImageFormat as refused:
            raise _unsupported(refused) from None
        if jpeg is not None:
            return jpeg
    return await _decode(data, settings, options, worker.stage)


@router.post("/stylize", summary="Stylize one image with one model", response_class=Response,
             responses={200: {"content": {"image/png": {}, "image/jpeg": {}}, "description": "the stylized image"},
                        **ERROR_RESPONSES})
async def stylize(settings: SettingsDep, worker: WorkerDep, file: Upload,
                  model: Annotated[str, Form(description="model name, from GET /v1/models")],
                  strength: Strength = 1.0, preserve_color: PreserveColor = False,
                  max_size: MaxSize = None, format: Format = "png", style: Style = None, mix: Mix = None,
                  paint_size: PaintSize = None) -> Response:
    worker.check_ready()
    worker.check_model(model)
    weights = worker.style_weights([model], style, mix)[model]
    worker.check_capacity()
    options = worker.options(strength, preserve_color, max_size, weights, paint_size)
    upload = await _read_upload(file)
    image = await _photo_for(worker, upload, settings, options)
    # A JPEG output may be written by the worker, on its device (Result.data); else it is encoded here.
    encode = "JPEG" if format == "jpeg" else None
    try:
        result = await worker.submit(model, image, options, encode)
    except UndecodableOnDevice:  # Pillow decodes it, or refuses it as it would on the CPU
        image = await _decode(upload, settings, options, worker.stage)
        result = await worker.submit(model, image, options, encode)
    data = result.data
    if data is None:
        out = result.image
        data = await run_in_threadpool(encode_image, out.rgb, format.upper(), out.alpha)
    w, h = result.size
    return Response(data, media_type=MEDIA_TYPES[format], headers={
        "X-Model": model, "X-Elapsed-Ms": f"{result.elapsed_s * 1e3:.1f}", "X-Image-Size": f"{w}x{h}",
        "Cache-Control": "no-store"})


def _style_label(info: ModelInfo, weights: tuple[float, ...] | None) -> str:
    """What a model's output was stylized with: an ordinary model's style; a multi-style model's style
    name (its first when none was asked for) or its mix, ``NAME=WEIGHT,...`` (weights above 0)."""
    names = style_names(info)
    if len(names) == 1:
        return info.style_name
    if weights is None:
        return names[0]
    if 1.0 in weights:
        return names[weights.index(1.0)]
    return ",".join(f"{name}={w:g}" for name, w in zip(names, weights) if w > 0)


def _data_url(data: bytes, fmt: str) -> str:
    return f"data:{MEDIA_TYPES[fmt]};base64,{base64.b64encode(data).decode('ascii')}"


@router.post("/compare", summary="Stylize one image with several models, side by side",
             response_model=CompareResponse,
             responses={200: {"content": {"application/json": {}, "image/png": {}, "image/jpeg": {}},
                              "description": "JSON with every output and its timing, or one grid image"},
                        **ERROR_RESPONSES})
async def compare(settings: SettingsDep, worker: WorkerDep, file: Upload,
                  models: Annotated[str, Form(description="comma-separated model names")],
                  strength: Strength = 1.0, preserve_color: PreserveColor = False, max_size: MaxSize = None,
                  format: Format = "png",
                  output: Annotated[Literal["json", "image"], Form(description="JSON or one grid image")] = "json",
                  style: Style = None, mix: Mix = None, paint_size: PaintSize = None) -> Response | CompareResponse:
    worker.check_ready()
    names = list(dict.fromkeys(n.strip() for n in models.split(",") if n.strip()))
    if not names:
        raise InvalidField("models: give at least one model name")
    if len(names) > settings.max_compare_models:
        raise InvalidField(f"models: at most {settings.max_compare_models} per comparison")
    for name in names:
        worker.check_model(name)
    # A style or mix applies to the multi-style models among them; the others run their one style.
    weights = worker.style_weights(names, style, mix)
    worker.check_capacity(len(names))
    options = {name: worker.options(strength, preserve_color, max_size, weights[name], paint_size) for name in names}
    image = await _read_photo(file, settings, options[names[0]])  # max_size is the same for every model
    # One photo through many models (style_transfer.sidebyside); the worker owns the device.
    outputs = await stylize_each_async(names, lambda name: worker.submit(name, image, options[name]), worker.info)
    for out in outputs:  # a multi-style model's output says which style or mix it ran
        out.style = _style_label(worker.info(out.name), weights[out.name])
    if output == "image":
        grid = await run_in_threadpool(comparison_grid, image.rgb, outputs, 512)
        buf = io.BytesIO()
        await run_in_threadpool(grid.save, buf, "PNG" if format == "png" else "JPEG")
        return Response(buf.getvalue(), media_type=MEDIA_TYPES[format], headers={"Cache-Control": "no-store"})
    encoded = await asyncio.gather(*(run_in_threadpool(encode_image, o.image.rgb, format.upper(), o.image.alpha)
                                     for o in outputs))
    original = await run_in_threadpool(encode_image, image.rgb, format.upper(), image.alpha)
    measured = await asyncio.gather(*(run_in_threadpool(photo_metrics, o.image.rgb, image.rgb) for o in outputs))
    h, w = image.rgb.shape[-2:]
    return CompareResponse(width=w, height=h, original=_data_url(original, format), results=[
        CompareResult(model=o.name, norm=o.norm, style=o.style, elapsed_ms=o.elapsed_s * 1e3,
                      image=_data_url(data, format), **metrics)
        for o, data, metrics in zip(outputs, encoded, measured)])
