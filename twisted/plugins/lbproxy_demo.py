from twisted.application.service import ServiceMaker

lbproxy_demo = ServiceMaker(
    "lbproxy-demo",
    "lbproxy.demo.tap",
    "lbproxy with demo backends and simulated users, to watch it work.",
    "lbproxy-demo",
)
