"""The built-in tools gpt-oss was trained with, run by the server: python (sandboxed) and browser.

`base` fixes the interface the Responses tool loop calls; `registry.build_tools` builds the enabled
tools from `ToolOptions`. Nothing here knows HTTP, the engine or the Responses store.
"""
