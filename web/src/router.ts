// Named routes; pages load lazily so the first route ships only what it draws.
import { createRouter, createWebHistory, type RouteLocationRaw } from 'vue-router'
import { handleUnauthenticated } from './api/client'
import { isProvider, signedIn } from './api/session'

export const router = createRouter({
  history: createWebHistory(),
  routes: [
    { path: '/', name: 'catalog', component: () => import('./views/CatalogView.vue'), meta: { auth: true, title: 'Catalog' } },
    { path: '/models/:name', name: 'model', component: () => import('./views/ModelView.vue'), props: true, meta: { auth: true, title: 'Model' } },
    { path: '/models/:name/playback', name: 'playback', component: () => import('./views/PlaybackView.vue'), props: true, meta: { auth: true, title: 'Playback' } },
    { path: '/subscriptions', name: 'subscriptions', component: () => import('./views/SubscriptionsView.vue'), meta: { auth: true, title: 'My subscriptions' } },
    { path: '/subscriptions/:id/webhooks', name: 'webhooks', component: () => import('./views/WebhooksView.vue'), props: true, meta: { auth: true, title: 'Webhooks' } },
    { path: '/api-keys', name: 'api-keys', component: () => import('./views/ApiKeysView.vue'), meta: { auth: true, title: 'API keys' } },
    // The provider console: providers only (the guard below answers others with the 403 page).
    { path: '/console', name: 'console', component: () => import('./views/ConsoleView.vue'), meta: { auth: true, provider: true, title: 'Console' } },
    { path: '/console/new', name: 'console-new', component: () => import('./views/ConsoleCreateView.vue'), meta: { auth: true, provider: true, title: 'Create a model' } },
    { path: '/console/models/:name', name: 'console-model', component: () => import('./views/ConsoleModelView.vue'), props: true, meta: { auth: true, provider: true, title: 'Console' } },
    { path: '/sign-in', name: 'sign-in', component: () => import('./views/SignInView.vue'), meta: { title: 'Sign in' } },
    { path: '/sign-up', name: 'sign-up', component: () => import('./views/SignUpView.vue'), meta: { title: 'Sign up' } },
    { path: '/forbidden', name: 'forbidden', component: () => import('./views/ErrorView.vue'), props: { code: 403 }, meta: { title: 'Not allowed' } },
    { path: '/:rest(.*)*', name: 'not-found', component: () => import('./views/ErrorView.vue'), props: { code: 404 }, meta: { title: 'Not found' } },
  ],
  scrollBehavior: () => ({ top: 0 }),
})

export function signInRoute(back: string): RouteLocationRaw {
  return { name: 'sign-in', query: back && back !== '/sign-in' ? { next: back } : {} }
}

router.beforeEach((to) => {
  if (to.meta.auth && !signedIn()) return signInRoute(to.fullPath)
  if (to.meta.provider && !isProvider()) return { name: 'forbidden', replace: true }
  return true
})

router.afterEach((to) => {
  document.title = `${String(to.meta.title ?? '')} · Foretell`
})

// A 401 anywhere: sign in, then back to the page the user was on.
handleUnauthenticated(() => {
  const current = router.currentRoute.value
  if (current.name !== 'sign-in') void router.push(signInRoute(current.fullPath))
})
