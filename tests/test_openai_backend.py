"""The OpenAI-compatible backend against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest

from instructforge.devserver import DevServer
from instructforge.llm import LLMError, OpenAICompatible, RawCompletionUnsupported, SamplingParams

P = SamplingParams(max_tokens=8, seed=1)
MSG = [{"role": "user", "content": "hi"}]


def fast(url: str, model: str | None = "dev", **kw) -> OpenAICompatible:
    return OpenAICompatible(url, model, backoff_base=0.01, backoff_max=0.05, **kw)


@pytest.mark.parametrize("fault", ["429", "500", "503", "drop"])
def test_retries_transient_faults_then_succeeds(fault):
    with DevServer(faults=[fault, fault]) as srv:
        out = asyncio.run(fast(srv.url).chat(MSG, P))
    assert out.text == srv.answer
    assert srv.requests == 3


def test_retries_after_a_request_timeout():
    with DevServer(faults=["timeout"], timeout_sleep=2.0) as srv:
        out = asyncio.run(fast(srv.url, timeout=0.5).chat(MSG, P))
    assert out.text == srv.answer


def test_gives_up_after_max_retries_with_a_clear_error():
    with DevServer(faults=["500"] * 10) as srv:
        with pytest.raises(LLMError, match="failed after 3 attempts"):
            asyncio.run(fast(srv.url, max_retries=2).chat(MSG, P))


def test_unreachable_server_is_a_clear_error():
    llm = fast("http://127.0.0.1:9/v1", max_retries=1)
    with pytest.raises(LLMError, match="cannot connect to http://127.0.0.1:9/v1"):
        asyncio.run(llm.chat(MSG, P))


def test_wrong_model_name_is_a_clear_error_listing_available_models(dev_server):
    llm = fast(dev_server.url, "no-such-model")
    with pytest.raises(LLMError, match="'no-such-model' is not served.*available: dev"):
        asyncio.run(llm.resolve_model())


def test_wrong_model_name_in_a_request_is_a_clear_error(dev_server):
    with pytest.raises(LLMError, match="Check the model name"):
        asyncio.run(fast(dev_server.url, "typo").chat(MSG, P))


def test_refused_api_key_is_a_clear_error():
    with DevServer(faults=["401"]) as srv:
        with pytest.raises(LLMError, match="refused the API key"):
            asyncio.run(fast(srv.url).chat(MSG, P))


def test_model_defaults_to_the_servers_only_model(dev_server):
    llm = fast(dev_server.url, None)
    asyncio.run(llm.chat(MSG, P))
    assert llm.model == "dev"


def test_chat_only_server_raises_raw_completion_unsupported():
    with DevServer(completions=False) as srv:
        with pytest.raises(RawCompletionUnsupported, match="no raw text completion"):
            asyncio.run(fast(srv.url).complete("<|im_start|>user\n", P))


def test_concurrency_is_bounded():
    with DevServer(delay=0.05) as srv:
        llm = fast(srv.url, max_concurrency=3)

        async def many():
            peak = 0

            async def one():
                nonlocal peak
                task = asyncio.create_task(llm.chat(MSG, P))
                await asyncio.sleep(0.02)
                peak = max(peak, llm._sem.active)  # requests holding a slot
                await task

            await asyncio.gather(*(one() for _ in range(10)))
            return peak

        assert asyncio.run(many()) == 3


def test_api_key_is_not_in_the_description():
    llm = OpenAICompatible("http://127.0.0.1:1/v1", "m", "sk-secret")
    assert "sk-secret" not in repr(llm.describe())


def test_credentials_in_the_url_are_used_but_never_shown():
    with DevServer() as srv:
        url = f"http://user:S3CRETPASS@127.0.0.1:{srv.port}/v1?api_key=S3CRETKEY&api-version=2"
        llm = fast(url)
        # The query travels with every request path (it used to be cut into the path).
        assert asyncio.run(llm.chat(MSG, P)).text == srv.answer
    shown = repr((llm.base_url, llm.model_id, llm.describe()))
    assert "S3CRET" not in shown
    assert f"127.0.0.1:{srv.port}/v1?api-version=2" in shown


def test_a_failed_request_names_the_server_without_its_credentials():
    llm = fast("http://user:S3CRETPASS@127.0.0.1:9/v1?token=S3CRETKEY", max_retries=0)
    with pytest.raises(LLMError) as err:
        asyncio.run(llm.chat(MSG, P))
    assert "127.0.0.1:9" in str(err.value) and "S3CRET" not in str(err.value)


@pytest.mark.parametrize("kind", ["chat", "complete"])
@pytest.mark.parametrize("fault", ["empty_choices", "null_content", "empty_answer"])
def test_a_200_without_an_answer_is_retried_not_returned(fault, kind):
    with DevServer(faults=[fault]) as srv:
        llm = fast(srv.url)
        out = asyncio.run(llm.chat(MSG, P) if kind == "chat" else llm.complete("hi", P))
    assert out.text == srv.answer
    assert out.retries == {"empty": 1}


def test_an_empty_answer_the_model_stopped_on_is_an_answer():
    with DevServer(answer="") as srv:
        out = asyncio.run(fast(srv.url).chat(MSG, P))
    assert (out.text, out.finish_reason, srv.requests) == ("", "stop", 1)


@pytest.mark.parametrize("fault", ["list_body", "null_body", "not_json", "no_choices"])
def test_a_malformed_200_body_is_retried_like_a_server_error(fault):
    with DevServer(faults=[fault]) as srv:
        out = asyncio.run(fast(srv.url).chat(MSG, P))
    assert out.text == srv.answer
    assert out.retries == {"malformed": 1}


@pytest.mark.parametrize("fault, reason", [
    ("empty_choices", "no choices"),
    ("null_content", "content is null"),
    ("list_body", "the body is a JSON list"),
])
def test_a_call_that_only_gets_unusable_answers_fails_with_the_reason(fault, reason):
    with DevServer(faults=[fault] * 3) as srv:
        with pytest.raises(LLMError, match=reason) as e:
            asyncio.run(fast(srv.url, max_retries=2).chat(MSG, P))
    assert sum(e.value.retries.values()) == 2


def test_a_malformed_model_list_is_retried():
    with DevServer(faults=["list_body"]) as srv:
        assert asyncio.run(fast(srv.url, None).resolve_model()) == "dev"


def test_a_hung_request_times_out_and_is_retried():
    with DevServer(faults=["hang"]) as srv:
        out = asyncio.run(fast(srv.url, timeout=0.5).chat(MSG, P))
    assert out.text == srv.answer
    assert out.retries == {"timeout": 1}


def test_retries_are_counted_by_cause():
    with DevServer(faults=["503", "429", "503", "drop"]) as srv:
        out = asyncio.run(fast(srv.url).chat(MSG, P))
    assert out.retries == {"HTTP 503": 2, "HTTP 429": 1, "connection": 1}


def test_a_request_waiting_to_retry_leaves_its_slot_to_others():
    with DevServer(faults=["500"]) as srv:
        llm = fast(srv.url, max_concurrency=1)
        llm._delay = lambda attempt, retry_after: 1.0  # the first request waits 1 s to retry

        async def both():
            done = []

            async def one(tag, start):
                await asyncio.sleep(start)
                await llm.chat(MSG, P)
                done.append(tag)

            await asyncio.gather(one("first", 0), one("second", 0.1))
            return done

        assert asyncio.run(both()) == ["second", "first"]


def test_default_timeouts_bound_one_call_to_minutes():
    llm = OpenAICompatible("http://127.0.0.1:1/v1", "m")
    backoff = sum(min(llm.backoff_max, llm.backoff_base * 2**a) for a in range(llm.max_retries))
    worst = (llm.max_retries + 1) * llm.timeout + backoff
    assert llm.connect_timeout <= 10
    assert worst <= 15 * 60


@pytest.mark.parametrize("bad", [{"max_retries": -1}, {"timeout": 0}])
def test_bad_retry_settings_are_refused(bad):
    with pytest.raises(LLMError, match=next(iter(bad))):
        OpenAICompatible("http://127.0.0.1:1/v1", "m", **bad)


@pytest.mark.parametrize("url, local", [("http://127.0.0.1:8000/v1", True),
                                        ("http://localhost:8080/v1", True),
                                        ("http://[::1]:8000/v1", True),
                                        ("https://api.example.com/v1", False),
                                        ("http://10.0.0.5:8000/v1", False)])
def test_only_a_loopback_server_counts_as_local(url, local):
    # Work that may be thrown away (speculative answers) is started on local servers only.
    assert OpenAICompatible(url, "m").is_local() is local
