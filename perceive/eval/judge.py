"""An LLM judge through any OpenAI-compatible chat endpoint, with the paper's 0-1 scoring (§4.3).

Unlike the reference, a failed request is retried and, if it still fails, counted as a failure
(``None``), never silently scored 0.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

PROMPT = (
    "You are proofreading answers. Score the model's answer against the standard answer for the given question, "
    "from 0 (minimum) to 1 (full); closer answers score higher. Reply in the form \"score: <score>\".\n"
    "Question: {question}\nStandard answer: {answer}\nModel's answer: {prediction}"
)
_SCORE = re.compile(r"[01]\.?\d*")


@dataclass
class JudgeConfig:
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str = "gpt-4o"
    api_key_env: str = "OPENAI_API_KEY"
    retries: int = 3
    timeout: float = 30.0
    backoff: float = 1.0


class Judge:
    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg
        self.failures = 0
        self.requests = 0

    def score(self, question: str, answer: str, prediction: str) -> float | None:
        body = json.dumps({
            "model": self.cfg.model, "temperature": 0.0, "max_tokens": 64,
            "messages": [{"role": "user", "content": PROMPT.format(question=question, answer=answer,
                                                                   prediction=prediction)}],
        }).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = self.cfg.base_url.rstrip("/") + "/chat/completions"
        for attempt in range(self.cfg.retries + 1):
            self.requests += 1
            try:
                req = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.cfg.timeout) as resp:
                    reply = json.loads(resp.read())["choices"][0]["message"]["content"]
                m = _SCORE.search(reply or "")
                if m:
                    return min(1.0, max(0.0, float(m.group(0).rstrip("."))))
            except (urllib.error.URLError, OSError, KeyError, ValueError, json.JSONDecodeError):
                pass
            if attempt < self.cfg.retries:
                time.sleep(self.cfg.backoff * (attempt + 1))
        self.failures += 1
        return None
