"""Development tools, not needed in production: the sandbox APIs and ``relay demo``.

sandbox/      a local stand-in for the Servoki and DataLook APIs (needs the sandbox extra)
demo.py       ``relay demo``: the whole relay on embedded defaults against the sandbox
"""
