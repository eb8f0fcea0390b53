"""A chat backend whose replies are scripted, for the parsing and scoring paths of LLM judges
(their real-model paths are tested on the embedded model elsewhere)."""

from __future__ import annotations

import json

from medharm_nb.generate import Output


class Scripted:
    """Replies ``reply(messages) -> text`` per request; a reply starting ``ERROR:`` is a
    failed call with the rest as its error. Keeps every config and request it was given."""

    def __init__(self, reply):
        self.reply, self.configs, self.requests = reply, [], []

    def render(self, messages):
        return json.dumps(messages)

    def prepare(self):
        pass

    def generate(self, requests, config):
        self.configs.append(config)
        self.requests.extend(requests)
        for r in requests:
            text = self.reply(r.messages)
            yield [(r, Output(None, error=text[6:]) if text.startswith("ERROR:")
                    else Output(text))]
