"""The video API: a clip in, a job out (server/videos.py says why, and how jobs run)."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from style_transfer.imageio import VIDEO_SUFFIXES

from ..deps import WorkerDep
from ..errors import EmptyUpload, status_and_code
from ..videos import VideoJob, VideoJobs
from .stylize import ERROR_RESPONSES, MaxSize, Mix, PaintSize, PreserveColor, Strength, Style, _style_label

router = APIRouter(prefix="/v1", tags=["video"])

VIDEO_ERRORS = {
    **{code: ERROR_RESPONSES[code] for code in (400, 404, 422, 503)},
    413: {"description": "upload over the video limit (payload_too_large), or more frames than the server paints "
                         "per video (video_too_long)"},
    415: {"description": "not a video of these containers: MP4, MOV, MKV, WebM, AVI (recognised by content)"},
    501: {"description": "this server takes no videos (video_unsupported: the message says why)"},
}


class JobError(BaseModel):
    code: str
    message: str


class VideoStatus(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    model: str
    style: str = Field(description="what the frames are painted with: the model's style, or a multi-style "
                                   "model's style or mix (NAME=WEIGHT,...)")
    filename: str = Field(description="the result's file name: the upload's name and the model's, .mp4")
    frames_done: int
    frames_total: int | None = Field(description="the clip's frame count from its header (exact once done); "
                                                 "None when the header does not say")
    progress: float | None = Field(description="frames_done / frames_total (0 to 1); None without a count")
    width: int | None = Field(description="the result's size, once done")
    height: int | None = None
    audio: str | None = Field(None, description="what was done with the sound: none, copied, re-encoded to AAC")
    queue_position: int | None = Field(description="jobs ahead of it while queued (0: it runs next)")
    elapsed_s: float = Field(description="seconds painting so far (0 while queued)")
    eta_s: float | None = Field(description="seconds left at the rate so far, while running")
    error: JobError | None = Field(description="why it failed (the code as an upload refusal's would be)")
    result: str | None = Field(description="where the MP4 is, once done")
    expires_in_s: float | None = Field(description="seconds until an ended job and its result are removed")


def _videos(request: Request) -> VideoJobs:
    return request.app.state.videos


def status_of(videos: VideoJobs, job: VideoJob) -> VideoStatus:
    now = time.monotonic()
    total = job.frames_total
    error = None
    if job.error is not None:
        error = JobError(code=status_and_code(job.error)[1], message=str(job.error))
    return VideoStatus(
        id=job.id, status=job.status, model=job.model, style=job.style, filename=job.filename,
        frames_done=job.frames_done, frames_total=total,
        progress=min(1.0, job.frames_done / total) if total else None,
        width=job.width, height=job.height, audio=job.audio, queue_position=videos.queue_position(job),
        elapsed_s=round(job.elapsed_s(now), 3), eta_s=job.eta_s(now), error=error,
        result=f"/v1/videos/{job.id}/result" if job.status == "done" else None,
        expires_in_s=videos.expires_in_s(job))


VideoUpload = Annotated[UploadFile, File(description=f"a video: {', '.join(VIDEO_SUFFIXES)} (H.264, HEVC, VP9, "
                                                     "AV1, ... whatever FFmpeg decodes)")]


@router.post("/videos", status_code=202, response_model=VideoStatus, responses=VIDEO_ERRORS,
             summary="Stylize a video: queue a job (poll it, then fetch its result)")
async def create_video(request: Request, response: Response, worker: WorkerDep, file: VideoUpload,
                       model: Annotated[str, Form(description="model name, from GET /v1/models")],
                       strength: Strength = 1.0, preserve_color: PreserveColor = False, max_size: MaxSize = None,
                       style: Style = None, mix: Mix = None, paint_size: PaintSize = None) -> VideoStatus:
    """Every frame stylized as `/v1/stylize` would stylize it as a photo (the same options), written as
    H.264 MP4 with the clip's sound and timing. Answers 202 with the job; `Location` is where to poll."""
    videos = _videos(request)
    videos.check_available()
    worker.check_ready()
    worker.check_model(model)
    weights = worker.style_weights([model], style, mix)[model]
    videos.check_capacity()
    options = worker.options(strength, preserve_color, max_size, weights, paint_size)
    if file.size == 0:
        raise EmptyUpload("the uploaded file is empty")
    job = await run_in_threadpool(videos.create, file.file, file.filename, model,
                                  _style_label(worker.info(model), weights), options)
    response.headers["Location"] = f"/v1/videos/{job.id}"
    return status_of(videos, job)


@router.get("/videos/{job_id}", response_model=VideoStatus, summary="How far a video job got",
            responses={404: {"description": "no such job (deleted, or expired)"}})
async def video_status(request: Request, job_id: str) -> VideoStatus:
    videos = _videos(request)
    return status_of(videos, videos.get(job_id))


@router.get("/videos/{job_id}/result", response_class=FileResponse, summary="The stylized video (MP4)",
            responses={200: {"content": {"video/mp4": {}}, "description": "the video; Range requests work"},
                       404: {"description": "no such job"}, 409: {"description": "not done (yet)"}})
async def video_result(request: Request, job_id: str) -> FileResponse:
    job = _videos(request).result(job_id)
    return FileResponse(job.target, media_type="video/mp4", filename=job.filename, content_disposition_type="inline",
                        headers={"Cache-Control": "no-store"})


@router.delete("/videos/{job_id}", status_code=204, response_class=Response,
               summary="Cancel a video job and remove its files", responses={404: {"description": "no such job"}})
async def delete_video(request: Request, job_id: str) -> Response:
    await run_in_threadpool(_videos(request).delete, job_id)
    return Response(status_code=204)
