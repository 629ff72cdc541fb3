// @peculiar/x509 uses tsyringe, which refuses to load without a Reflect metadata API (the
// `reflect-metadata` package, not a dependency here). It needs only these three functions, with the
// semantics of that package; installed only where absent, so a real polyfill loaded earlier wins.
// Import this module before '@peculiar/x509'.

type MetadataMap = Map<unknown, unknown>;
const store = new WeakMap<object, Map<PropertyKey | undefined, MetadataMap>>();

function ownMap(target: object, property: PropertyKey | undefined, create: boolean): MetadataMap | undefined {
  let byProperty = store.get(target);
  if (byProperty === undefined) {
    if (!create) return undefined;
    byProperty = new Map();
    store.set(target, byProperty);
  }
  let map = byProperty.get(property);
  if (map === undefined && create) {
    map = new Map();
    byProperty.set(property, map);
  }
  return map;
}

const api = {
  defineMetadata(key: unknown, value: unknown, target: object, property?: PropertyKey): void {
    ownMap(target, property, true)?.set(key, value);
  },
  getOwnMetadata(key: unknown, target: object, property?: PropertyKey): unknown {
    return ownMap(target, property, false)?.get(key);
  },
  getMetadata(key: unknown, target: object, property?: PropertyKey): unknown {
    for (let o: object | null = target; o !== null; o = Object.getPrototypeOf(o) as object | null) {
      const map = ownMap(o, property, false);
      if (map?.has(key) === true) return map.get(key);
    }
    return undefined;
  },
};

const reflect = Reflect as unknown as Record<string, unknown>;
for (const [name, fn] of Object.entries(api)) {
  if (typeof reflect[name] !== 'function') reflect[name] = fn;
}
