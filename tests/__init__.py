
from hypothesis import HealthCheck, settings

# Property tests run on loaded CI machines (and under PyPy's warm-up): no per-example
# deadline and no "too slow" health check, so their outcome depends only on the code.
settings.register_profile("arp", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("arp")
