"""Power: sensors, the policy (modes and rules), the energy model, and the rate gate on inference."""
