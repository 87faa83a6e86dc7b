"""dropblock._shm: one connection per process, and a pool of its shared memory.

    client_for("")            the default socket's connection, opened once in this process
    client_for("/path/sock")  that socket's; client_for("local"): the in-process engine
    client_for(key_for(c))    a caller's own Client c (held weakly; once it is closed or gone, the
                              shared connection to its socket)
    pool_for(client).take(n)  n bytes of the client's memory (for a connection: shared memory the
                              daemon maps) as a NumPy uint8 array; when the array and its views
                              are gone the memory goes back to the pool for the next take

Frameworks name clients by these strings because their graphs (torch.compile, torch.export)
can carry strings but not Python objects. Used by dropblock.torch; NumPy only.
"""
import itertools
import os
import threading
import weakref

from ._core import Client, _invalid, _numpy, default_socket

__all__ = ["client_for", "close_shared", "key_for", "pool_for", "release_pools"]

# free memory a pool keeps for later takes (DROPBLOCK_POOL_BYTES); blocks past it are released
POOL_BYTES = int(os.environ.get("DROPBLOCK_POOL_BYTES", 1 << 30))
_PAGE = 4096

_lock = threading.RLock()
_pid = os.getpid()
_shared = {}  # target -> Client opened by client_for, this process's
_pools = weakref.WeakKeyDictionary()  # Client -> Pool
_own = weakref.WeakValueDictionary()  # "client:N" -> a caller's Client
_own_keys = weakref.WeakKeyDictionary()  # Client -> "client:N"
_own_where = {}  # "client:N" -> the target of its socket (or "local"), for when it is closed or gone
_counter = itertools.count(1)
# what a forked child inherited: kept referenced, never closed or freed there, as the parent's
# connection (its socket, its regions) is the parent's
_inherited = []


def _check_fork():  # under _lock
    global _pid, _shared, _pools
    if _pid == os.getpid():
        return
    for c in _shared.values():
        fin = getattr(c, "_finalizer", None)
        if fin is not None:
            fin.detach()  # closing would unregister the parent's regions on its socket
    _inherited.append((_shared, dict(_pools)))
    _pid, _shared, _pools = os.getpid(), {}, weakref.WeakKeyDictionary()


def key_for(client):
    """The string that names a caller's own Client in client_for (and in traced graphs)."""
    with _lock:
        key = _own_keys.get(client)
        if key is None:
            key = "client:%d" % next(_counter)
            _own_keys[client], _own[key] = key, client
            _own_where[key] = "local" if not client.is_remote else (client.socket or "")
        return key


def client_for(target):
    """The Client a target string names (see the module doc): one per process per socket,
    reopened after fork or after it was closed."""
    with _lock:
        _check_fork()
        if target.startswith("client:"):
            c = _own.get(target)
            if c is not None and not c.closed:
                return c
            if target not in _own_where:
                raise _invalid("%s: no dropblock.Client of this process has that name" % target)
            target = _own_where[target]  # closed or gone: the shared connection to its socket
        # "" and the default socket's own path name the same daemon: one connection
        key = target if target == "local" else os.path.abspath(target or default_socket())
        c = _shared.get(key)
        if c is None or c.closed:
            c = Client(local=True) if key == "local" else Client(key)
            _shared[key] = c
        return c


def pool_for(client):
    """client's Pool (made on first use). Pools of clients closed since are emptied here: their
    free blocks are what keeps such a connection open (close() waits for its memory)."""
    with _lock:
        _check_fork()
        for c, p in list(_pools.items()):
            if c.closed and p.free:
                p.release()
        p = _pools.get(client)
        if p is None:
            p = _pools[client] = Pool(client, shared=any(c is client for c in _shared.values()))
        return p


def release_pools():
    """Releases the free memory of every pool (memory in use goes when its arrays do)."""
    with _lock:
        pools = list(_pools.values())
    for p in pools:
        p.release()


def close_shared():
    """Closes this process's shared connections and releases every pool's free memory, so that
    a client closed by its owner ends now too; the next client_for opens a new connection."""
    with _lock:
        _check_fork()
        clients = list(_shared.values())
        _shared.clear()
    release_pools()
    for c in clients:
        c.close()


class _Block:
    """A taken stretch of a pool's block; NumPy arrays over it keep it alive, and its death gives
    the block back."""

    __slots__ = ("_iface", "__weakref__")

    def __init__(self, raw, nbytes):
        self._iface = {"shape": (nbytes,), "typestr": "|u1", "data": (raw.ctypes.data, False), "version": 3}

    @property
    def __array_interface__(self):
        return self._iface


class Pool:
    """Memory of one client, recycled: takes the smallest free block of at least the size (and at
    most twice it), the last returned among equals, or allocates one (client.array, page-rounded);
    a taken array's death returns its block. Free blocks beyond POOL_BYTES in total are released,
    oldest first. Thread-safe.

    A caller's own client (not one of client_for's) keeps its free blocks in the client's scratch
    list instead (up to four), which its close() empties: a pool of ours would hold them, and so
    the connection, open after its owner closed it."""

    def __init__(self, client, shared=True):
        self._client = weakref.ref(client)  # the pool must not keep its key alive
        self.shared = shared
        self.free = []  # raw uint8 arrays over client memory, the most recently returned last
        self.free_bytes = 0
        self.lock = threading.Lock()
        self.pid = os.getpid()

    def take(self, nbytes):
        np = _numpy()
        need = max(1, -(-nbytes // _PAGE)) * _PAGE
        client = self._client()
        if client is None:
            raise _invalid("the pool's dropblock.Client is gone")
        scratch, unscratch = getattr(client, "_scratch", None), getattr(client, "_unscratch", None)
        if not self.shared and scratch is not None and unscratch is not None and client.is_remote:
            mem = scratch(need)
            block = _Block(np.asarray(mem), nbytes)
            weakref.finalize(block, unscratch, mem)
            return np.asarray(block)
        raw = None
        with self.lock:
            if client.closed:  # its memory goes as soon as nothing holds it
                self.free, self.free_bytes = [], 0
            best = None
            for i, r in enumerate(self.free):  # <=: the most recently returned of a size (warm in cache)
                if need <= r.nbytes <= 2 * need and (best is None or r.nbytes <= self.free[best].nbytes):
                    best = i
            if best is not None:
                raw = self.free.pop(best)
                self.free_bytes -= raw.nbytes
        if raw is None:
            raw = client.array((need,), np.uint8)
        block = _Block(raw, nbytes)
        weakref.finalize(block, self._give, raw)
        return np.asarray(block)

    def _give(self, raw):
        if self.pid != os.getpid():
            _inherited.append(raw)  # a forked child never frees its parent's memory
            return
        client = self._client()
        with self.lock:
            if client is None or client.closed:
                return
            self.free.append(raw)
            self.free_bytes += raw.nbytes
            while self.free_bytes > POOL_BYTES and self.free:
                self.free_bytes -= self.free.pop(0).nbytes

    def release(self):
        with self.lock:
            self.free, self.free_bytes = [], 0
