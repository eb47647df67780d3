from twisted.application.service import ServiceMaker

lbproxy = ServiceMaker(
    "lbproxy",
    "lbproxy.startup.tap",
    "A TCP load balancer with a live admin API and UI.",
    "lbproxy",
)
