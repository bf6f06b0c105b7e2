"""The live view's prompt endpoints (a mixin of `LiveServer`): freeze/release a frame, add, remove,
save and load prompts. Every one of them changes state, so each needs the token (the server's guard).

A viewer (the page's random id) freezes the newest frame: the server pins it for that viewer until
its prompt is added, the viewer goes back to live, leaves, or lets it sit past the idle timeout; so
drawing a box may take as long as the user needs. Scripts may instead name a recent frame by its
index (`/api/snapshot`'s `X-Frame-Index`) while the memory-sized ring still holds it.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Dict


class PromptRoutes:
    def add_prompt_routes(self, r: Any) -> None:
        r.add_post("/api/freeze", self._freeze)
        r.add_post("/api/release", self._release)
        r.add_get("/api/prompts", self._prompt_list)
        r.add_post("/api/prompts", self._prompt_add)
        r.add_delete("/api/prompts/{name}", self._prompt_remove)
        r.add_post("/api/prompts/save", self._prompt_save)
        r.add_post("/api/prompts/load", self._prompt_load)
        r.add_get("/api/prompts/files", self._prompt_files)

    def _no_prompts(self):
        if self.prompts is None:
            return self._json({"error": "this run has no prompted detector (edgedet run --prompt-encoder ...)"}, status=404)
        return None

    async def _body(self, request) -> Dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            data = await request.json()
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"the request body must be JSON ({e})") from e
        if not isinstance(data, dict):
            raise ValueError("the request body must be a JSON object")
        return data

    async def _prompt_call(self, request, fn: Callable[[Dict[str, Any]], Any]):
        refused = self._no_prompts()
        if refused is not None:
            return refused
        try:
            data = await self._body(request)
            out = await asyncio.get_running_loop().run_in_executor(None, fn, data)
        except (ValueError, KeyError, FileNotFoundError, FileExistsError) as e:
            return self._json({"error": str(e).strip("'\"")}, status=400)
        return self._json({"prompts": list(self.prompts.names), **(out or {})})

    async def _freeze(self, request):
        from aiohttp import web

        refused = self._no_prompts()
        if refused is not None:
            return refused
        try:
            viewer = self._viewer(request, await self._body(request))
        except ValueError as e:
            return self._json({"error": str(e)}, status=400)
        if viewer is None:
            return self._json({"error": "freeze needs the page's viewer id (letters, digits, '-', '_')"}, status=400)
        result = self.store.pin(viewer)
        if result is None:
            return self._json({"error": "no frame yet"}, status=503)
        jpeg = await asyncio.get_running_loop().run_in_executor(None, self.jpeg.encode_now, result.frame.image)
        return web.Response(body=jpeg, content_type="image/jpeg",
                            headers={"X-Frame-Index": str(result.frame.index), "Cache-Control": "no-store"})

    async def _release(self, request):
        try:
            viewer = self._viewer(request, await self._body(request))
        except ValueError as e:
            return self._json({"error": str(e)}, status=400)
        return self._json({"released": self.store.release(viewer)})

    def _frame_for(self, data: Dict[str, Any]):
        """The frame a prompt is drawn on: the viewer's pinned frame, else a recent one by index."""
        index, viewer = data.get("frame"), self._viewer(None, data) if data.get("viewer") else None
        try:
            index = None if index is None else int(index)
        except (TypeError, ValueError):
            raise ValueError(f"frame must be a frame index (an integer), got {index!r}") from None
        pinned = self.store.pinned(viewer)
        if pinned is not None and (index is None or index == pinned.frame.index):
            return pinned
        held = self.store.recent(index) if index is not None else None
        if held is not None:
            return held
        if viewer is not None:
            raise ValueError(f"the frozen frame {index} was released (left untouched {self.store.pin_idle_s:.0f} s, the page "
                             "closed, or back to live); freeze a frame again")
        raise ValueError(f"frame {index} is no longer held (the live view keeps {self.store.ring_frames} recent frames); "
                         "freeze one first (POST /api/freeze with a viewer id pins it)")

    async def _prompt_add(self, request):
        def add(data: Dict[str, Any]):
            name = str(data.get("name", "")).strip()
            result = self._frame_for(data)
            self.prompts.add(result.frame.image, box=data.get("box"), point=data.get("point"), name=name)
            if data.get("viewer"):
                self.store.release(self._viewer(None, data))  # the prompt is in: back to live
            return {"added": name, "frame": int(result.frame.index)}

        return await self._prompt_call(request, add)

    async def _prompt_remove(self, request):
        name = request.match_info["name"]
        return await self._prompt_call(request, lambda _: {"removed": self.prompts.remove(name)})

    async def _prompt_save(self, request):
        return await self._prompt_call(request, lambda d: {"saved": str(self.prompts.save(str(d.get("file", "")),
                                                                                           bool(d.get("overwrite"))))})

    async def _prompt_load(self, request):
        return await self._prompt_call(request, lambda d: {"loaded": str(self.prompts.load(str(d.get("file", ""))))})

    async def _prompt_list(self, request):
        if self.prompts is None:
            return self._json({"prompts": None})
        return self._json({"prompts": list(self.prompts.names)})

    async def _prompt_files(self, request):
        if self.prompts is None:
            return self._json({"files": []})
        return self._json({"files": self.prompts.files()})
