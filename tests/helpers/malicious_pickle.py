"""A pickled object whose unpickling runs a shell command: what a malicious checkpoint does. Loading code must refuse
it without running it; the command touches ``marker``, so a test sees whether it ran."""


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))
