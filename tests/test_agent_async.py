"""``Agent.arun`` / ``astream`` (issue 11 item 7): on LangGraph's async API, the same result, events and
errors as ``run`` / ``stream``, without blocking the event loop. Images are drawn here; the segmenter is
the real MedSAM3-Lite, or (where masks must be found, to compare them) the oracle backend over the drawn
polyp's mask; the MLLM failure goes through the fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from agent_helpers import FakeOpenAI, OracleBackend, openai_agent, text_reply
from PIL import Image

from agent import Agent, AgentError


def drawn_image() -> np.ndarray:
    """An endoscopy-like picture: a reddish disc (a polyp) on a darker textured background."""
    return drawn()[0]


def drawn() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    image = rng.integers(70, 100, size=(240, 320, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:240, :320]
    disc = (yy - 110) ** 2 + (xx - 170) ** 2 < 45**2
    image[disc] = (205, 95, 85)
    return image, disc


@pytest.fixture()
def oracle(tmp_path) -> OracleBackend:
    """The drawn polyp's mask as the segmenter's answer (so the runs compared find a mask)."""
    image, disc = drawn()
    Image.fromarray(image).save(tmp_path / "image.png")
    Image.fromarray(disc.astype(np.uint8) * 255).save(tmp_path / "polyp.png")
    return OracleBackend({str(tmp_path / "image.png"): {"polyp": str(tmp_path / "polyp.png")}})


def masks_of(result) -> list[tuple[str, np.ndarray]]:
    return [(m.concept, inst.mask) for m in result.masks for inst in m.instances]


async def collect(events) -> list:
    return [event async for event in events]


def test_arun_gives_the_result_of_run(oracle):
    agent = Agent(planner="offline", segmenter=oracle)
    image = drawn_image()
    sync = agent.run("find the polyps", image=image)
    result = asyncio.run(agent.arun("find the polyps", image=image))
    assert result.answer == sync.answer and result.concepts_tried == sync.concepts_tried
    pairs = list(zip(masks_of(result), masks_of(sync), strict=True))
    assert pairs and all(a[0] == b[0] and np.array_equal(a[1], b[1]) for a, b in pairs)
    assert [e.kind for e in result.trace] == [e.kind for e in sync.trace]
    assert result.trace[-1].kind == "answer" and result.trace[-1].result is result


def test_astream_yields_the_events_of_stream_in_order_and_keeps_the_loop_free(segmenter):
    agent = Agent(planner="offline", segmenter=segmenter)
    image = drawn_image()
    sync = [(e.kind, e.node) for e in agent.stream("find the polyps", image=image)]

    async def main() -> tuple[list, int]:
        ticks = 0
        running = True

        async def ticker() -> None:
            nonlocal ticks
            while running:
                await asyncio.sleep(0.005)
                ticks += 1

        task = asyncio.create_task(ticker())
        events = await collect(agent.astream("find the polyps", image=image))
        running = False
        await task
        return events, ticks

    events, ticks = asyncio.run(main())
    assert [(e.kind, e.node) for e in events] == sync
    assert sync[0][0] == "plan" and sync[-1][0] == "answer"
    assert ticks >= 3, ticks  # the loop ran other work while the image was encoded and segmented


def test_async_errors_are_the_sync_ones(segmenter):
    agent = Agent(planner="offline", segmenter=segmenter)
    with pytest.raises(ValueError, match="question is empty"):
        asyncio.run(agent.arun("  ", image=drawn_image()))
    unusable = [text_reply("hmm, hard to say")] * 3  # three replies without a tool call end the run
    with FakeOpenAI(list(unusable)) as server, pytest.raises(AgentError) as sync:
        list(openai_agent(server, segmenter).stream("find the polyp", image=drawn_image()))
    with FakeOpenAI(list(unusable)) as server:
        events: list = []

        async def main() -> None:
            async for event in openai_agent(server, segmenter).astream("find the polyp", image=drawn_image()):
                events.append(event)

        with pytest.raises(AgentError) as caught:
            asyncio.run(main())
    assert type(caught.value) is type(sync.value) and str(caught.value) == str(sync.value)
    assert events[-1].kind == "error" and caught.value.partial is not None
    assert [e.kind for e in caught.value.partial.trace] == [e.kind for e in sync.value.partial.trace]


def test_a_thread_continues_across_async_turns_in_a_checkpoint_file(oracle, tmp_path):
    image = drawn_image()

    async def main() -> tuple:
        with Agent(planner="offline", segmenter=oracle, checkpoint_db=tmp_path / "threads.db") as agent:
            first = await agent.arun("find the polyps", image=image, thread_id="t1")
            second = await agent.arun("now only the largest one", thread_id="t1")  # the thread's stored image
            return first, second, agent.thread_state("t1")

    first, second, state = asyncio.run(main())
    assert first.masks and state["turn"] == 2 and second.thread_id == "t1"
    assert state["previous"]["question"] == "now only the largest one"


def test_a_turn_cancelled_while_its_thread_is_busy_leaves_no_lock_behind(oracle):
    agent = Agent(planner="offline", segmenter=oracle)

    async def main() -> None:
        with agent._lock.hold("t1"):  # another turn of thread t1 is running
            task = asyncio.create_task(agent.arun("find the polyps", image=drawn_image(), thread_id="t1"))
            for _ in range(500):  # until the turn waits for the lock (its holder and one waiter)
                if agent._lock._locks["t1"][1] == 2:
                    break
                await asyncio.sleep(0.01)
            assert agent._lock._locks["t1"][1] == 2
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        for _ in range(100):  # the waiting worker takes the lock once it is free, then hands it back
            if not agent._lock.busy("t1"):
                break
            await asyncio.sleep(0.02)

    asyncio.run(main())
    assert not agent._lock.busy("t1")
    assert agent.run("find the polyps", image=drawn_image(), thread_id="t1").masks  # the thread still runs
