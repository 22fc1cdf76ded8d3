"""`perceive mcp`: perceive's perception actions and graphs as tools of any agent, over the Model Context
Protocol (stdio or streamable HTTP). :mod:`perceive.mcp.toolbox` is what is served, independent of the SDK;
:mod:`perceive.mcp.server` is the SDK glue and the transports."""
