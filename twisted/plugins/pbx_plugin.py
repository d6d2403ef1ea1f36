from twisted.application.service import ServiceMaker

pbx = ServiceMaker(
    "Twisted PBX",
    "pbx.tap",
    "A business phone system: SIP registrar, B2BUA, RTP relay and REST API.",
    "pbx",
)
