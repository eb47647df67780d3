"""
Listening: the listen descriptions (L{lbproxy.listening.endpoints}) and the
services that bind and listen on them (L{lbproxy.listening.listener_services}),
for both relay engines, the admin site, the workers and the listener manager.
"""
