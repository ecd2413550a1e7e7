"""A real SMTP server for tests/email.rs: aiosmtpd on 127.0.0.1, a free port chosen by the kernel.

Usage: python3 smtp_sink.py <directory> [delay_seconds]

Prints one JSON line {"port": N} once listening. Each message accepted is written to <directory> as
<n>.eml (the DATA exactly as received) beside <n>.json (the envelope: mail_from, rcpt_tos). With a delay, the
server waits that long after the end of DATA before it accepts the message; a client that disconnects meanwhile
(a daemon killed with SIGKILL) gets nothing accepted and nothing is written, as a real server would not deliver it.
Files appear atomically (written under a temporary name, then renamed).
"""

import asyncio
import itertools
import json
import os
import sys

from aiosmtpd.smtp import SMTP

counter = itertools.count(1)


class Sink:
    def __init__(self, directory, delay):
        self.directory = directory
        self.delay = delay

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            # Cancelled with the connection (aiosmtpd cancels the handler on connection_lost).
            await asyncio.sleep(self.delay)
        if server.transport is None or server.transport.is_closing():
            return "421 closing"
        n = next(counter)
        base = os.path.join(self.directory, f"{n:06d}")
        meta = {"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos)}
        with open(base + ".json.tmp", "w") as f:
            json.dump(meta, f)
        os.rename(base + ".json.tmp", base + ".json")
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(base + ".eml.tmp", base + ".eml")
        return "250 OK"


async def main():
    directory = sys.argv[1]
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    loop = asyncio.get_running_loop()
    handler = Sink(directory, delay)
    server = await loop.create_server(lambda: SMTP(handler, decode_data=False), "127.0.0.1", 0)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await server.serve_forever()


asyncio.run(main())
