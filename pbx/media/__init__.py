"""Media: the RTP relay that sits between two phones of a call.

`portpool` hands out RTP/RTCP port pairs, `rtp` reads RTP headers and keeps
per-direction statistics (pure), `relay` binds the sockets and forwards.
Importing this package imports nothing from Twisted, so `pbx.sip.sdp` can
use the payload-type table in `pbx.media.rtp` without pulling in the reactor.
"""
