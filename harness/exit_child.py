"""A child interpreter for the exit tests and bench/exit_safety.py: threads do one kind of
pool work (``MODES``), then the interpreter exits. Prints ``exiting N`` just before
``sys.exit``, N showing that the work was under way.

    python harness/exit_child.py MODE CONNINFO
"""

MODES = ("rollback", "check", "connecting", "maintaining", "django")

if __name__ == "__main__":
    import socket
    import sys
    import threading
    import time

    mode, conninfo = sys.argv[1], sys.argv[2]
    import psycopg
    from django_lido import Pool

    done = []

    def loop(work):
        while True:
            work()
            done.append(1)

    def pool_with(**options):
        return Pool(lambda: psycopg.connect(conninfo), max_size=4, timeout=5, **options)

    if mode == "rollback":  # returns with a transaction open: a rollback in putconn
        pool = pool_with()

        def work():
            conn = pool.getconn()
            try:
                conn.execute("SELECT 1")
            finally:
                pool.putconn(conn)
    elif mode == "check":  # a round-trip check at every checkout
        pool = pool_with(check_after_idle=0)

        def work():
            pool.putconn(pool.getconn())
    elif mode in ("connecting", "maintaining"):
        # A server that takes the TCP connection and never answers: connects hang.
        silent = socket.create_server(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        pool = Pool(
            lambda: psycopg.connect(host="127.0.0.1", port=port, connect_timeout=30),
            min_size=2 if mode == "maintaining" else 0,
            max_size=4,
            timeout=30,
        )

        def work():
            pool.putconn(pool.getconn())
    elif mode == "django":
        import django
        from django.conf import settings

        params = dict(kv.split("=", 1) for kv in conninfo.split())
        settings.configure(
            USE_TZ=True,
            DATABASES={
                "default": {
                    "ENGINE": "django_lido.backends.postgresql",
                    "NAME": params["dbname"],
                    "HOST": params["host"],
                    "PORT": params["port"],
                    "USER": params["user"],
                    "OPTIONS": {"pool": {"max_size": 4, "timeout": 5}},
                }
            },
        )
        django.setup()
        from django.db import close_old_connections, connection, transaction

        def work():
            with transaction.atomic():
                connection.cursor().execute("SELECT 1")
            connection.cursor().execute("SELECT 1")
            close_old_connections()
            connection.close()

    for _ in range(0 if mode == "maintaining" else 8):
        threading.Thread(target=loop, args=(work,), daemon=True).start()
    time.sleep(0.3)
    # Connects to the silent server never finish: there, the pool's own state shows the work.
    busy = pool.stats()["opening"] if mode in ("connecting", "maintaining") else len(done)
    print("exiting", busy, flush=True)
    sys.exit(0)
